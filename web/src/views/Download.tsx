import type { MouseEvent } from 'react';

/**
 * A "Download CSV" link: a plain same-origin link (the session cookie goes
 * along), saved under the server's file name. href is computed again at the
 * click, so a live chart's link covers the range shown at that moment.
 */
export function DownloadLink({ href, label = 'Download CSV', title }: { href: () => string; label?: string; title?: string }) {
  const refresh = (e: MouseEvent<HTMLAnchorElement>) => {
    e.currentTarget.href = href();
  };
  return (
    <a className="download" href={href()} download onClick={refresh} title={title}>
      ⤓ {label}
    </a>
  );
}
