// Where a checker issue's path (`services[0].handler.type`) sits in a YAML text: the 1-based
// line of the key (or sequence item) it names, or null.
//
// A light walk over indentation that knows block mappings and block sequences -- the style the
// relay's configs and the templates are written in. Anything else (flow style, anchors, keys
// the checker names but the text lacks) finds nothing, and the issue is still listed by path.

/** `a.b[0].c` -> ['a', 'b', 0, 'c']; null when it is not such a path. */
export function segments(path) {
  const out = []
  for (const part of String(path).split('.')) {
    const match = part.match(/^([^[\]]*)((?:\[\d+\])*)$/)
    if (!match) return null
    if (match[1]) out.push(match[1])
    for (const index of match[2].matchAll(/\[(\d+)\]/g)) out.push(Number(index[1]))
  }
  return out.length ? out : null
}

/** A content line: its dash column (a `- ` item) or null, the column of what follows, its key. */
function describe(line) {
  if (!line.trim() || line.trim().startsWith('#')) return null
  let col = line.search(/\S/)
  let dash = null
  let rest = line.slice(col)
  const item = rest.match(/^-(\s+|$)/)
  if (item) {
    dash = col
    col += item[0].length
    rest = rest.slice(item[0].length)
  }
  const key = rest.match(/^(?:"([^"]*)"|'([^']*)'|([^\s:#][^:#]*?))\s*:(\s|$)/)
  return { dash, col, key: key ? (key[1] ?? key[2] ?? key[3]) : null }
}

/** The column where a line starts (its dash when it is an item). */
function start(d) {
  return d.dash ?? d.col
}

export function lineOf(text, path) {
  const segs = segments(path)
  if (!segs) return null
  const lines = String(text).split('\n').map(describe)
  let from = 0
  let to = lines.length
  let found = null
  for (const seg of segs) {
    const first = lines.slice(from, to).find(Boolean)
    if (!first) return null
    if (typeof seg === 'string') {
      // The block's keys are at the column of its first entry.
      const col = first.col
      let at = null
      for (let i = from; i < to; i++) {
        const d = lines[i]
        if (!d) continue
        if (d.col === col && d.key === seg) {
          at = i
          break
        }
      }
      if (at === null) return null
      found = at
      // The value's block: the lines after the key that are indented deeper, or a sequence
      // whose dashes sit at the key's own column (YAML allows both).
      let end = at + 1
      const next = lines.slice(at + 1, to).find(Boolean)
      const seqAtKey = next && next.dash === col
      while (end < to) {
        const d = lines[end]
        if (d && (start(d) < col || (start(d) === col && !(seqAtKey && d.dash === col)))) break
        end += 1
      }
      from = at + 1
      to = end
    } else {
      // The n-th item of the sequence whose dashes are at the first line's dash column.
      if (first.dash === null) return null
      const items = []
      for (let i = from; i < to; i++) if (lines[i] && lines[i].dash === first.dash) items.push(i)
      if (seg >= items.length) return null
      found = items[seg]
      // The item's block starts on its own line: its first key is after the dash.
      from = items[seg]
      to = seg + 1 < items.length ? items[seg + 1] : to
      lines[from] = { ...lines[from], dash: null } // inside the item, that line is a plain entry
    }
  }
  return found === null ? null : found + 1
}
