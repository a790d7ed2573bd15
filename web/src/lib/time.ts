/** Time conversions for Plotly's date axes. */

/** Plotly shows epoch numbers as UTC: shift them so the axis reads local time. */
export function toPlotX(t: number): number {
  return t - new Date(t).getTimezoneOffset() * 60_000;
}

/** The inverse of toPlotX for a value from a Plotly relayout event. */
export function fromPlotX(x: string | number): number {
  let shifted: number;
  if (typeof x === 'number') shifted = x;
  else {
    let s = x.trim().replace(' ', 'T');
    if (/^\d{4}-\d\d-\d\d$/.test(s)) s += 'T00:00:00';
    shifted = Date.parse(/[zZ]$|[+-]\d\d:?\d\d$/.test(s) ? s : `${s}Z`);
  }
  return shifted + new Date(shifted).getTimezoneOffset() * 60_000;
}
