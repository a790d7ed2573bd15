import { useEffect, useState, useSyncExternalStore } from 'react';
import { parseRoute, type Route } from './lib/route';
import { canSignOut, describeIdentity, session, type Session, type SessionState } from './lib/session';
import { AlarmsView } from './views/Alarms';
import { ConnIndicator, LatencyBadge } from './views/common';
import { Fleet } from './views/Fleet';
import { MachineView } from './views/Machine';
import { OeeView } from './views/Oee';
import { SignIn } from './views/SignIn';

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

function useSession(): SessionState {
  useEffect(() => void session.load(), []);
  return useSyncExternalStore((l) => session.subscribe(l), () => session.state);
}

export function App() {
  const state = useSession();
  const [route, navigate] = useRoute();
  const [theme, toggleTheme] = useTheme();
  const signedIn = state.status === 'signed-in' ? state.session : undefined;
  return (
    <>
      <a className="skip" href="#main">
        Skip to content
      </a>
      <header className="top">
        <strong className="brand">twinline</strong>
        {signedIn && <Nav route={route} />}
        <span className="spacer" />
        {signedIn && (
          <>
            <LatencyBadge />
            <ConnIndicator />
            <Identity s={signedIn} />
          </>
        )}
        <button onClick={toggleTheme} aria-label={`Switch to ${theme === 'dark' ? 'light' : 'dark'} theme`}>
          {theme === 'dark' ? '☀ light' : '☾ dark'}
        </button>
      </header>
      <main id="main">
        {state.status === 'loading' && <p className="muted">Loading…</p>}
        {state.status === 'error' && (
          <div role="alert">
            <p className="error">{state.message}</p>
            <button onClick={() => void session.load()}>Try again</button>
          </div>
        )}
        {state.status === 'signed-out' && <SignIn reason={state.reason} />}
        {signedIn && <Views route={route} navigate={navigate} session={signedIn} />}
      </main>
    </>
  );
}

function Nav({ route }: { route: Route }) {
  return (
    <nav aria-label="Views">
      <a href="#/" aria-current={route.view === 'fleet' ? 'page' : undefined}>
        Fleet
      </a>
      <a href="#/alarms" aria-current={route.view === 'alarms' ? 'page' : undefined}>
        Alarms
      </a>
      <a href="#/oee" aria-current={route.view === 'oee' ? 'page' : undefined}>
        OEE
      </a>
      <a href="/docs">API</a>
    </nav>
  );
}

/** Who is signed in, and Sign out; nothing for the anonymous identity of an open server. */
function Identity({ s }: { s: Session }) {
  const [err, setErr] = useState<string>();
  if (s.kind === 'anonymous') return null;
  const signOut = async () => {
    try {
      await session.signOut();
    } catch (e) {
      setErr((e as Error).message);
    }
  };
  return (
    <span className="identity" data-testid="identity">
      <span title={`scopes: ${s.scopes.join(', ') || 'none'}`}>
        <span className="sr-only">Signed in as </span>
        {describeIdentity(s)}
      </span>
      {canSignOut(s) && <button onClick={() => void signOut()}>Sign out</button>}
      {err && (
        <span className="error" role="alert">
          {err}
        </span>
      )}
    </span>
  );
}

function Views({ route, navigate, session }: { route: Route; navigate(hash: string, replace?: boolean): void; session: Session }) {
  return (
    <>
      {route.view === 'fleet' && <Fleet q={route.q} status={route.status} group={route.group} navigate={navigate} />}
      {route.view === 'alarms' && <AlarmsView session={session} />}
      {route.view === 'oee' && <OeeView period={route.period} site={route.site} navigate={navigate} />}
      {route.view === 'machine' && (
        <MachineView key={route.id} id={route.id} range={route.range} metrics={route.metrics} navigate={navigate} session={session} />
      )}
    </>
  );
}
