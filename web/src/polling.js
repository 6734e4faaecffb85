// Reload a screen's data every `seconds` while it is shown (and at once when it opens).
// Loads never overlap; a reload asked for during one (a filter changed) runs right after it,
// so the screen always ends on what the latest filters select.
import { onMounted, onBeforeUnmount } from 'vue'

export function usePolling(load, seconds) {
  let timer = null
  let running = null
  let again = false
  const tick = async () => {
    if (running) {
      again = true
      return running
    }
    running = (async () => {
      do {
        again = false
        await load()
      } while (again)
    })()
    try {
      await running
    } finally {
      running = null
    }
  }
  onMounted(() => {
    tick()
    timer = setInterval(tick, seconds * 1000)
  })
  onBeforeUnmount(() => clearInterval(timer))
  return tick
}
