// Swagger UI and ReDoc for /docs and /redoc, from their npm packages and our pages (docs/),
// into the API package: served from there, no CDN.
import { copyFileSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "..");
const out = join(process.env.STREAMSEG_STATIC_OUT ?? join(root, "..", "services", "api", "web", "static"), "docs");
rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
const files = [
  ["node_modules/swagger-ui-dist/swagger-ui-bundle.js", "swagger-ui-bundle.js"],
  ["node_modules/swagger-ui-dist/swagger-ui.css", "swagger-ui.css"],
  ["node_modules/swagger-ui-dist/LICENSE", "swagger-ui.LICENSE"],
  ["node_modules/redoc/bundles/redoc.standalone.js", "redoc.standalone.js"],
  ["node_modules/redoc/LICENSE", "redoc.LICENSE"],
];
for (const [from, to] of files) copyFileSync(join(root, from), join(out, to));
// ReDoc's footer loads its maker's logo from a CDN: offline (and under the pages'
// Content-Security-Policy) that is an error in the console. An empty image instead.
const CDN_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg";
const redoc = join(out, "redoc.standalone.js");
const text = readFileSync(redoc, "utf8");
if (!text.includes(CDN_LOGO)) throw new Error(`redoc.standalone.js no longer has ${CDN_LOGO}: check the patch`);
writeFileSync(redoc, text.replaceAll(CDN_LOGO, "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg'/%3E"));
for (const name of readdirSync(join(root, "docs"))) copyFileSync(join(root, "docs", name), join(out, name));
