// The REST client of the console: the only place that talks to the master (/api/v1).
//
// The JWT pair lives in this module's memory only -- never in localStorage or a cookie -- so a
// reload or a closed tab ends the session. The access token is refreshed before it expires
// (at 80 % of its lifetime) and once more on a 401; when the refresh token is refused too
// (expired, revoked, user deleted) the session ends cleanly: tokens dropped, the login screen
// shown with the reason.
import { reactive } from 'vue'

export const API = '/api/v1'

const RANK = { viewer: 0, operator: 1, admin: 2 }

/** An answer other than 2xx, as the API describes it ({error, message, field, issues}). */
export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`)
    this.status = status
    this.code = (body && body.error) || 'http_error'
    this.field = (body && body.field) || null
    this.issues = (body && Array.isArray(body.issues) && body.issues) || []
  }
}

/** Who is logged in (reactive: the screens show what the role can use). */
export const session = reactive({ user: null, role: null, notice: '', refreshedAt: null })

let access = null
let refreshToken = null
let refreshTimer = null
let refreshing = null

/** True when the logged-in role is at least `role` (viewer < operator < admin). */
export function can(role) {
  return session.role != null && RANK[session.role] >= RANK[role]
}

function claims(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/')
    return JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), '=')))
  } catch {
    return {}
  }
}

async function parse(res) {
  const type = res.headers.get('Content-Type') || ''
  if (type.includes('json')) {
    try {
      return await res.json()
    } catch {
      return { error: 'bad_answer', message: `HTTP ${res.status}: the answer is not valid JSON` }
    }
  }
  const text = (await res.text()).trim()
  return { error: 'http_error', message: `HTTP ${res.status}${text ? ': ' + text.slice(0, 300) : ''}` }
}

function schedule(expiresIn) {
  clearTimeout(refreshTimer)
  const seconds = Math.max(2, Number(expiresIn || 60) * 0.8)
  refreshTimer = setTimeout(() => {
    refreshNow().catch(() => {}) // a failed refresh has already ended the session
  }, seconds * 1000)
}

function drop() {
  clearTimeout(refreshTimer)
  access = null
  refreshToken = null
  session.user = null
  session.role = null
}

/** End the session because the master no longer accepts it. */
function expire(reason) {
  if (session.user == null) return
  drop()
  session.notice = `Your session has expired${reason ? ` (${reason})` : ''}. Log in again.`
}

/** Log in; throws ApiError (401 wrong password, 429 too many attempts...). */
export async function login(username, password) {
  const res = await fetch(`${API}/auth/login`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ username, password }),
  })
  const body = await parse(res)
  if (!res.ok) throw new ApiError(res.status, body)
  access = body.access_token
  refreshToken = body.refresh_token
  session.user = username
  session.role = body.role
  session.notice = ''
  schedule(body.expires_in)
}

/** A new access token from the refresh token (one request at a time). */
export function refreshNow() {
  if (!refreshing) {
    refreshing = (async () => {
      if (!refreshToken) throw new ApiError(401, { message: 'not logged in' })
      let res
      try {
        res = await fetch(`${API}/auth/refresh`, {
          method: 'POST',
          headers: { Authorization: `Bearer ${refreshToken}` },
        })
      } catch (err) {
        schedule(10) // the master is unreachable: try again soon, keep the session
        throw err
      }
      const body = await parse(res)
      if (!res.ok) {
        if (res.status === 401 || res.status === 403) expire(body.message)
        else schedule(10)
        throw new ApiError(res.status, body)
      }
      access = body.access_token
      const role = claims(access).role
      if (role) session.role = role // a role changed by an admin applies at refresh
      session.refreshedAt = new Date()
      schedule(body.expires_in)
    })().finally(() => {
      refreshing = null
    })
  }
  return refreshing
}

/** Revoke the tokens at the master and forget them. */
export async function logout() {
  let notice = 'Logged out.'
  try {
    await request('POST', '/auth/logout')
  } catch (err) {
    notice = `Logged out here; the master said: ${err.message}`
  }
  drop()
  session.notice = notice
}

function send(method, path, body) {
  const headers = { Authorization: `Bearer ${access}` }
  const init = { method, headers }
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json'
    init.body = JSON.stringify(body)
  }
  return fetch(API + path, init)
}

/** One API call; resolves to the JSON answer, rejects with ApiError. */
export async function request(method, path, body) {
  if (!access) throw new ApiError(401, { error: 'unauthorized', message: 'not logged in' })
  let res = await send(method, path, body)
  if (res.status === 401 && refreshToken) {
    await refreshNow() // throws (and ends the session) when the refresh token is refused
    res = await send(method, path, body)
  }
  const data = await parse(res)
  if (!res.ok) {
    if (res.status === 401) expire(data.message)
    throw new ApiError(res.status, data)
  }
  return data
}

export const get = (path) => request('GET', path)
export const post = (path, body) => request('POST', path, body)

/** `?a=1&b=x` from an object, leaving out empty values; arrays repeat the parameter. */
export function query(params) {
  const search = new URLSearchParams()
  for (const [key, value] of Object.entries(params)) {
    if (value === null || value === undefined || value === '') continue
    for (const item of Array.isArray(value) ? value : [value]) search.append(key, String(item))
  }
  const text = search.toString()
  return text ? `?${text}` : ''
}

/**
 * Follow a Server-Sent Events stream of the API until its `end` message (or `signal` aborts).
 * `onMessage(event, data, id)` sees each message as it arrives. EventSource cannot send the
 * bearer token, so this reads the stream with fetch; when the master closes a stream before
 * `end` (its streams have a maximum life), it reconnects with Last-Event-ID and loses nothing.
 */
export async function follow(path, onMessage, signal) {
  let lastId = null
  let retry = 2000
  for (;;) {
    const headers = { Authorization: `Bearer ${access}`, Accept: 'text/event-stream' }
    if (lastId !== null) headers['Last-Event-ID'] = String(lastId)
    const res = await fetch(API + path, { headers, signal })
    if (res.status === 401 && refreshToken) {
      await refreshNow()
      continue
    }
    if (!res.ok) throw new ApiError(res.status, await parse(res))
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader()
    let buffer = ''
    let message = { event: 'message', data: [], id: null }
    for (;;) {
      const { value, done } = await reader.read()
      if (done) break
      buffer += value
      let cut
      while ((cut = buffer.indexOf('\n')) >= 0) {
        const line = buffer.slice(0, cut).replace(/\r$/, '')
        buffer = buffer.slice(cut + 1)
        if (line === '') {
          if (message.data.length) {
            if (message.id !== null) lastId = message.id
            const data = JSON.parse(message.data.join('\n'))
            onMessage(message.event, data, message.id)
            if (message.event === 'end') {
              reader.cancel().catch(() => {})
              return data
            }
          }
          message = { event: 'message', data: [], id: null }
          continue
        }
        if (line.startsWith(':')) continue // keepalive comment
        const colon = line.indexOf(':')
        const field = colon < 0 ? line : line.slice(0, colon)
        const text = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '')
        if (field === 'data') message.data.push(text)
        else if (field === 'event') message.event = text
        else if (field === 'id') message.id = Number(text)
        else if (field === 'retry' && /^\d+$/.test(text)) retry = Number(text)
      }
    }
    await new Promise((resolve) => setTimeout(resolve, retry))
  }
}
