import { useEffect, useState } from 'react';
import { parseRoute, type Route } from './lib/route';
import { AlarmsView } from './views/Alarms';
import { ConnIndicator, LatencyBadge } from './views/common';
import { Fleet } from './views/Fleet';
import { MachineView } from './views/Machine';

function useRoute(): [Route, (hash: string, replace?: boolean) => void] {
  const [hash, setHash] = useState(window.location.hash);
  useEffect(() => {
    const on = () => setHash(window.location.hash);
    window.addEventListener('hashchange', on);
    return () => window.removeEventListener('hashchange', on);
  }, []);
  const navigate = (h: string, replace = false) => {
    if (h === window.location.hash) return;
    if (replace) {
      history.replaceState(null, '', h);
      setHash(h);
    } else {
      window.location.hash = h;
    }
  };
  return [parseRoute(hash), navigate];
}

function useTheme(): [string, () => void] {
  const [theme, setTheme] = useState(
    () => localStorage.getItem('twinline.theme') ?? (matchMedia('(prefers-color-scheme: dark)').matches ? 'dark' : 'light'),
  );
  useEffect(() => {
    document.documentElement.dataset.theme = theme;
    localStorage.setItem('twinline.theme', theme);
    // charts read their colours from CSS variables when they draw
    window.dispatchEvent(new Event('twinline-theme'));
  }, [theme]);
  return [theme, () => setTheme((t) => (t === 'dark' ? 'light' : 'dark'))];
}

export function App() {
  const [route, navigate] = useRoute();
  const [theme, toggleTheme] = useTheme();
  return (
    <>
      <a className="skip" href="#main">
        Skip to content
      </a>
      <header className="top">
        <strong className="brand">twinline</strong>
        <nav aria-label="Views">
          <a href="#/" aria-current={route.view === 'fleet' ? 'page' : undefined}>
            Fleet
          </a>
          <a href="#/alarms" aria-current={route.view === 'alarms' ? 'page' : undefined}>
            Alarms
          </a>
          <a href="/docs">API</a>
        </nav>
        <span className="spacer" />
        <LatencyBadge />
        <ConnIndicator />
        <button onClick={toggleTheme} aria-label={`Switch to ${theme === 'dark' ? 'light' : 'dark'} theme`}>
          {theme === 'dark' ? '☀ light' : '☾ dark'}
        </button>
      </header>
      <main id="main">
        {route.view === 'fleet' && <Fleet q={route.q} status={route.status} group={route.group} navigate={navigate} />}
        {route.view === 'alarms' && <AlarmsView />}
        {route.view === 'machine' && (
          <MachineView key={route.id} id={route.id} range={route.range} metrics={route.metrics} navigate={navigate} />
        )}
      </main>
    </>
  );
}
