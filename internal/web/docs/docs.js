// The API reference at /docs: Swagger UI (swagger-ui-bundle.js, from the
// npm package swagger-ui-dist) over /api/openapi.json, where every
// operation can be tried. A file of its own, not an inline script: the
// page's Content-Security-Policy allows scripts from this origin only.
//
// Credentials: "Authorize" sets Authorization: Bearer (the document's
// bearer scheme). Without it the browser sends the dashboard's session
// cookie, if signed in; a state-changing call then needs the session's
// CSRF token (internal/api/security.go), which is fetched once from
// GET /api/v1/session and added as X-CSRF-Token.
'use strict';

(function () {
  let csrf; // a promise of the session's CSRF token ('' without a session)

  function sessionCSRF() {
    csrf ??= fetch('/api/v1/session', { credentials: 'same-origin', headers: { Accept: 'application/json' } })
      .then((r) => (r.ok ? r.json() : {}))
      .then((s) => s.csrf || '')
      .catch(() => '');
    return csrf;
  }

  function hasHeader(headers, name) {
    return Object.keys(headers || {}).some((k) => k.toLowerCase() === name.toLowerCase());
  }

  async function addCSRF(req) {
    const method = (req.method || 'GET').toUpperCase();
    if (method === 'GET' || method === 'HEAD' || method === 'OPTIONS' || hasHeader(req.headers, 'Authorization')) return req;
    const token = await sessionCSRF();
    if (token) req.headers = { ...req.headers, 'X-CSRF-Token': token };
    return req;
  }

  window.ui = SwaggerUIBundle({
    url: '/api/openapi.json',
    dom_id: '#swagger-ui',
    deepLinking: true,
    // no calls to the public validator service
    validatorUrl: null,
    displayRequestDuration: true,
    filter: true,
    showExtensions: true,
    // tokens are not written to localStorage
    persistAuthorization: false,
    requestInterceptor: addCSRF,
    presets: [SwaggerUIBundle.presets.apis],
    layout: 'BaseLayout',
  });
})();
