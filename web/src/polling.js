// Reload a screen's data every `seconds` while it is shown (and at once when it opens).
import { onMounted, onBeforeUnmount } from 'vue'

export function usePolling(load, seconds) {
  let timer = null
  let busy = false
  const tick = async () => {
    if (busy) return
    busy = true
    try {
      await load()
    } finally {
      busy = false
    }
  }
  onMounted(() => {
    tick()
    timer = setInterval(tick, seconds * 1000)
  })
  onBeforeUnmount(() => clearInterval(timer))
  return tick
}
