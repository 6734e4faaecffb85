// The console is served by the master at /ui (master_api/console.py), so assets are built
// with that base. `make web` runs `npm ci && npm run build` into web/dist (not committed).
import { defineConfig } from 'vite'
import vue from '@vitejs/plugin-vue'

export default defineConfig({
  base: '/ui/',
  plugins: [vue()],
  build: { outDir: 'dist', emptyOutDir: true, sourcemap: false },
  // `npm run dev` against a master on :8080: the API goes through Vite's proxy.
  server: { proxy: { '/api': 'http://127.0.0.1:8080' } },
})
