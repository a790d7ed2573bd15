import { useState, type FormEvent } from 'react';
import { session } from '../lib/session';

/** The sign-in page: shown when the server requires a token and there is no session. */
export function SignIn({ reason }: { reason?: string }) {
  const [token, setToken] = useState('');
  const [busy, setBusy] = useState(false);
  const [err, setErr] = useState<string>();
  const submit = async (e: FormEvent) => {
    e.preventDefault();
    if (!token.trim()) return;
    setBusy(true);
    setErr(undefined);
    try {
      await session.signIn(token);
    } catch (x) {
      // the problem's detail (e.g. "invalid token"), not the status line
      setErr((x as { detail?: string }).detail || (x as Error).message);
      setBusy(false);
    }
  };
  return (
    <div className="sign-in" data-testid="sign-in">
      <h1>Sign in</h1>
      {reason && <p className="muted">{reason}</p>}
      <form onSubmit={submit} aria-label="Sign in">
        <label>
          API token
          <input
            type="password"
            name="token"
            autoComplete="off"
            spellCheck={false}
            placeholder="tl_…"
            value={token}
            onChange={(e) => setToken(e.target.value)}
            autoFocus
            required
          />
        </label>
        <button type="submit" className="primary" disabled={busy}>
          Sign in
        </button>
        {err && (
          <p className="error" role="alert" data-testid="sign-in-error">
            {err}
          </p>
        )}
      </form>
      <p className="muted">
        An administrator creates tokens with <code>twinline token create</code>; the dashboard keeps a session cookie, not
        the token.
      </p>
    </div>
  );
}
