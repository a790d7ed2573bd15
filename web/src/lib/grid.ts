/**
 * Layout of the virtualised fleet grid: group headers and rows of tiles,
 * with the offsets needed to render only what is in view.
 */

export type GridRow<T> =
  | { kind: 'header'; key: string; label: string; count: number; top: number; height: number }
  | { kind: 'tiles'; key: string; items: T[]; top: number; height: number };

export interface GridLayout<T> {
  rows: GridRow<T>[];
  height: number;
}

export function layoutGrid<T>(
  groups: { key: string; label: string; items: T[] }[],
  columns: number,
  tileRowHeight: number,
  headerHeight: number,
  showHeaders: boolean,
): GridLayout<T> {
  const rows: GridRow<T>[] = [];
  let top = 0;
  const cols = Math.max(1, columns);
  for (const g of groups) {
    if (showHeaders) {
      rows.push({ kind: 'header', key: `h:${g.key}`, label: g.label, count: g.items.length, top, height: headerHeight });
      top += headerHeight;
    }
    for (let i = 0; i < g.items.length; i += cols) {
      rows.push({ kind: 'tiles', key: `r:${g.key}:${i}`, items: g.items.slice(i, i + cols), top, height: tileRowHeight });
      top += tileRowHeight;
    }
  }
  return { rows, height: top };
}

/** The rows overlapping [scrollTop - overscan, scrollTop + viewport + overscan]. */
export function visibleRows<T>(layout: GridLayout<T>, scrollTop: number, viewport: number, overscan: number): GridRow<T>[] {
  const lo = scrollTop - overscan;
  const hi = scrollTop + viewport + overscan;
  const rows = layout.rows;
  // first row whose bottom is past lo
  let a = 0;
  let b = rows.length;
  while (a < b) {
    const mid = (a + b) >> 1;
    if (rows[mid].top + rows[mid].height <= lo) a = mid + 1;
    else b = mid;
  }
  const out: GridRow<T>[] = [];
  for (let i = a; i < rows.length && rows[i].top < hi; i++) out.push(rows[i]);
  return out;
}
