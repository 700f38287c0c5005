import { join } from "node:path";
import { defineConfig } from "vite";

// Built into the API package, which serves it at /dashboard/ (services/api/web/routes.py);
// deploy/dashboard.sh builds elsewhere (STREAMSEG_STATIC_OUT) to compare with what is committed.
const out = process.env.STREAMSEG_STATIC_OUT ?? "../services/api/web/static";

export default defineConfig({
  base: "/dashboard/",
  build: {
    outDir: join(out, "dashboard"),
    emptyOutDir: true,
    assetsDir: "assets",
    // Never inline an asset as a data: URL or a script into the page: the page's
    // Content-Security-Policy allows scripts from this origin only.
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
    sourcemap: false,
    chunkSizeWarningLimit: 1200,
  },
});
