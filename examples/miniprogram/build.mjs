// build.mjs — the package's entry points from the one source, paygate.js:
//   miniprogram_dist/index.js  CommonJS, what the mini-program "Build npm" copies (the
//                              package.json "miniprogram" field) and what require() loads
//   esm/index.mjs              an ES module, for bundlers (uni-app with Vite, Taro) and import
// Run `node build.mjs` (or `npm run build`) after editing paygate.js; `node build.mjs --check`
// exits 1 when the files are not what paygate.js makes (tests/e2e/miniprogram-package.test.mjs).
import { readFileSync, writeFileSync, mkdirSync, existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const source = readFileSync(join(here, 'paygate.js'), 'utf8');
const EXPORT = 'module.exports = { create: create };\n';
if (!source.endsWith(EXPORT) || /\brequire\(/.test(source.split('\n').filter((l) => !l.startsWith('//')).join('\n'))) {
  console.error('build.mjs: paygate.js must end with "' + EXPORT.trim() + '" and require nothing');
  process.exit(1);
}
const head = (what) => `// ${what} — generated from paygate.js by build.mjs: edit paygate.js, then run node build.mjs.\n`;
const outputs = {
  'miniprogram_dist/index.js': head('paygate-miniprogram, CommonJS') + source,
  'esm/index.mjs': head('paygate-miniprogram, ES module') + source.slice(0, -EXPORT.length)
    + 'export { create };\nexport default { create: create };\n',
};
let stale = 0;
for (const [name, text] of Object.entries(outputs)) {
  const path = join(here, name);
  const now = existsSync(path) ? readFileSync(path, 'utf8') : null;
  if (now === text) continue;
  if (process.argv.includes('--check')) { console.error(`build.mjs: ${name} is out of date`); stale++; continue; }
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, text);
  console.error('wrote ' + name); // stderr: npm pack --json prints its manifest on stdout
}
process.exit(stale ? 1 : 0);
