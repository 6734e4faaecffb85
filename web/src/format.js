// Small display helpers shared by the screens.

export function when(iso) {
  if (!iso) return '—'
  const date = new Date(iso)
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString()
}

export function ago(iso) {
  if (!iso) return 'never'
  const seconds = Math.round((Date.now() - new Date(iso).getTime()) / 1000)
  if (seconds < 60) return `${Math.max(0, seconds)} s ago`
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`
  return `${Math.floor(seconds / 86400)} d ago`
}

export function num(value, digits = 0) {
  if (value === null || value === undefined) return '—'
  return Number(value).toFixed(digits)
}

export function percent(ratio) {
  if (ratio === null || ratio === undefined) return '—'
  return `${(ratio * 100).toFixed(2)} %`
}

export function bytes(value) {
  if (value === null || value === undefined) return '—'
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let v = value
  let i = 0
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024
    i += 1
  }
  return `${v.toFixed(i ? 1 : 0)} ${units[i]}`
}

/** "a, b ,c" -> ['a', 'b', 'c'] */
export function list(text) {
  return String(text || '')
    .split(',')
    .map((item) => item.trim())
    .filter(Boolean)
}

/** Count the items by a key: [[value, count], ...] sorted by value. */
export function countBy(items, key) {
  const counts = new Map()
  for (const item of items) counts.set(item[key], (counts.get(item[key]) || 0) + 1)
  return [...counts.entries()].sort((a, b) => String(a[0]).localeCompare(String(b[0])))
}
