import type { Plugin } from 'vite';

/** Copies Swagger UI's files into the build's docs/ (docs-viewer.mjs). */
export function apiDocsViewer(): Plugin;
