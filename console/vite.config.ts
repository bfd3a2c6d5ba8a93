// The console's build: served by the switchboard binary at /console/ (embedded from dist/).
// File names carry no hash: the binary serves them with `no-cache`, and the embedding follows
// their contents.
//
// Besides the console (index.html), the build makes the pages the binary serves at their own
// paths (serving/src/pages.rs): the supervisor dashboard (/dashboard), the chat widget (/chat),
// the help centre (/help), order tracking (/track) and returns (/returns), each an HTML page with its script in
// src/pages/; and the satisfaction survey's script (assets/csat.js), whose page the binary renders
// (serving/src/csat.rs). Their shared styles are public/pages.css and public/dashboard.css,
// copied as they are (/console/pages.css, /console/dashboard.css).
import { defineConfig } from "vitest/config";
import vue from "@vitejs/plugin-vue";

const here = (path: string) => decodeURIComponent(new URL(path, import.meta.url).pathname);

export default defineConfig({
  base: "/console/",
  plugins: [vue()],
  build: {
    outDir: "dist",
    emptyOutDir: true,
    // No inline scripts or styles: the strict CSP (script-src 'self'; style-src 'self').
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
    rollupOptions: {
      input: {
        index: here("index.html"),
        dashboard: here("dashboard.html"),
        chat: here("chat.html"),
        help: here("help.html"),
        track: here("track.html"),
        returns: here("returns.html"),
        csat: here("src/pages/csat.ts"),
      },
      output: {
        entryFileNames: "assets/[name].js",
        chunkFileNames: "assets/[name].js",
        assetFileNames: "assets/[name][extname]",
      },
    },
  },
  test: {
    environment: "jsdom",
    include: ["tests/**/*.test.ts"],
  },
});
