/// <reference types="vitest/config" />
import { defineConfig, type Plugin } from 'vite';
import { apiDocsViewer } from './docs-viewer.mjs';

/**
 * The Go server routes "/" to the dashboard (internal/api: GET /{$}), so
 * the build is one self-contained index.html: the entry script and the
 * styles are inlined here, and the server gzips it once. Chunks imported
 * dynamically (the OpenTelemetry SDK, only when tracing is on; Plotly,
 * only when a view charts) stay files
 * under assets/, which the server serves at /assets/ (internal/web); the
 * entry is named at the root so that its import paths ("./assets/…")
 * resolve from the page's URL.
 */
function singleFile(): Plugin {
  return {
    name: 'twinline-single-file',
    enforce: 'post',
    // after Vite's own generateBundle, which fills in the dynamic imports' preload lists
    generateBundle: {
      order: 'post',
      handler(_, bundle) {
        const html = Object.values(bundle).find((f) => f.type === 'asset' && f.fileName === 'index.html');
        if (!html || html.type !== 'asset') return;
        let out = String(html.source);
        for (const [name, f] of Object.entries(bundle)) {
          if (f.type === 'chunk' && f.isEntry) {
            const re = new RegExp(`<script type="module" crossorigin src="[^"]*${escapeRe(name)}"></script>`);
            const code = f.code.replace(/<\/(script)/gi, '<\\/$1');
            out = out.replace(re, () => `<script type="module">${code}</script>`);
            delete bundle[name];
          } else if (f.type === 'asset' && name.endsWith('.css')) {
            const re = new RegExp(`<link rel="stylesheet" crossorigin href="[^"]*${escapeRe(name)}">`);
            out = out.replace(re, () => `<style>${String(f.source)}</style>`);
            delete bundle[name];
          }
        }
        html.source = out;
      },
    },
  };
}

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

export default defineConfig({
  esbuild: { jsx: 'automatic' },
  plugins: [singleFile(), apiDocsViewer()],
  build: {
    outDir: '../internal/web/dist/app',
    emptyOutDir: true,
    target: 'es2022',
    cssCodeSplit: false,
    assetsInlineLimit: 100_000_000,
    reportCompressedSize: true,
    chunkSizeWarningLimit: 4000,
    // no modulepreload polyfill: the page is one file, its chunks need none
    modulePreload: false,
    rollupOptions: {
      output: {
        entryFileNames: '[name].js',
        chunkFileNames: 'assets/[name]-[hash].js',
        // Plotly is imported dynamically by the chart (views/Chart.tsx): its
        // own asset, plotly-HASH.js, fetched only by the views that chart
        manualChunks(id) {
          if (id.includes('/node_modules/plotly.js-basic-dist-min/')) return 'plotly';
        },
      },
    },
  },
  server: {
    proxy: {
      '/api': { target: 'http://127.0.0.1:8080', ws: true },
      '/docs': 'http://127.0.0.1:8080',
    },
  },
  test: {
    include: ['src/**/*.test.ts'],
    environment: 'node',
  },
});
