// The API reference viewer at /docs (docs/decisions/0029-api-docs-viewer.md):
// Swagger UI's prebuilt files, copied from the npm package swagger-ui-dist
// into docs/ beside the dashboard, where internal/web embeds them and
// serves them at /docs/{file}; the page around them is internal/web/docs
// (committed, so it is tested without npm). The stylesheet's source map
// comment is cut (the maps are not shipped), and the package's licence
// files go along. Plain JavaScript: the config's type check has no Node
// types (docs-viewer.d.mts declares this module).
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

/** Served name → file of the package. */
const files = {
  'swagger-ui-bundle.js': 'swagger-ui-bundle.js',
  'swagger-ui.css': 'swagger-ui.css',
  'swagger-ui-bundle.js.LICENSE.txt': 'swagger-ui-bundle.js.LICENSE.txt',
  'swagger-ui-LICENSE.txt': 'LICENSE',
  'swagger-ui-NOTICE.txt': 'NOTICE',
};

/** @returns {import('vite').Plugin} */
export function apiDocsViewer() {
  const pkg = dirname(createRequire(import.meta.url).resolve('swagger-ui-dist/package.json'));
  return {
    name: 'twinline-api-docs-viewer',
    apply: 'build',
    writeBundle(options) {
      if (!options.dir) throw new Error('twinline-api-docs-viewer: the build has no output directory');
      const out = join(options.dir, 'docs');
      mkdirSync(out, { recursive: true });
      for (const [name, from] of Object.entries(files)) {
        const src = join(pkg, from);
        if (name.endsWith('.js') || name.endsWith('.css')) {
          const text = readFileSync(src, 'utf8').replace(/\n?\/[/*]# sourceMappingURL=\S+\s*$/, '\n');
          writeFileSync(join(out, name), text);
        } else {
          copyFileSync(src, join(out, name));
        }
      }
    },
  };
}
