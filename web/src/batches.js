// Progress of a deployment, per batch, from its event stream.
//
// Ansible runs a play once per `serial` batch, and each run starts with a
// `playbook_on_play_start` event: that is where a batch begins. Within a batch, every
// `playbook_on_task_start` is a task and every runner_on_* result is one host finishing one
// task. How many tasks a play has is only known once a batch of it has ended, so the first
// batch's bar shows tasks started without a fraction; later batches of the same playbook
// measure against it. A batch ends with the next play start or the playbook's stats.

const RESULTS = {
  runner_on_ok: 'ok',
  runner_on_failed: 'failed',
  runner_on_skipped: 'skipped',
  runner_on_unreachable: 'unreachable',
}

/** Expected hosts per batch: `targets` split into groups of `serial` (all at once without). */
export function batchSizes(targets, serial) {
  if (!targets) return []
  const size = serial && serial > 0 ? serial : targets
  const sizes = []
  for (let left = targets; left > 0; left -= size) sizes.push(Math.min(size, left))
  return sizes
}

function newBatch(playbook, index, play) {
  return {
    playbook,
    index,
    play,
    hosts: new Set(),
    tasks: 0,
    task: '',
    results: { ok: 0, changed: 0, failed: 0, skipped: 0, unreachable: 0 },
    done: false,
  }
}

/**
 * The batches seen so far: [{playbook, index, play, hosts, tasks, task, results, done,
 * expected, percent}], `percent` null while it cannot be measured yet.
 */
export function batchesOf(deployment, events) {
  const batches = []
  let current = null
  let rollbackHosts = 0
  for (const e of events) {
    if (e.event === 'rollback_started') rollbackHosts = (e.data.hosts || []).length
    if (e.event === 'playbook_on_play_start') {
      if (current) current.done = true
      const index = batches.filter((b) => b.playbook === e.playbook).length
      current = newBatch(e.playbook, index, e.data.play || '')
      batches.push(current)
    } else if (!current) {
      continue
    } else if (e.event === 'playbook_on_task_start') {
      current.tasks += 1
      current.task = e.task || ''
    } else if (RESULTS[e.event]) {
      if (e.host) current.hosts.add(e.host)
      current.results[RESULTS[e.event]] += 1
      if (e.event === 'runner_on_ok' && e.data.changed) current.results.changed += 1
    } else if (e.event === 'playbook_on_stats' || e.event === 'runner_status') {
      if (e.event === 'playbook_on_stats' || ['successful', 'failed', 'canceled', 'timeout'].includes(e.data.status)) {
        current.done = true
      }
    }
  }
  const targets = deployment ? deployment.targets.length : 0
  const sizes = batchSizes(targets, deployment ? deployment.serial : null)
  const tasksPerPlay = {}
  for (const b of batches) if (b.done && !(b.playbook in tasksPerPlay)) tasksPerPlay[b.playbook] = b.tasks
  for (const b of batches) {
    const expected =
      b.playbook === 'rollback' && rollbackHosts
        ? rollbackHosts
        : sizes[b.index] || Math.max(b.hosts.size, 1)
    b.expected = expected
    b.total = b.playbook === 'rollback' ? 1 : sizes.length || 1
    const perPlay = tasksPerPlay[b.playbook]
    const finished = Object.values(b.results).reduce((a, n) => a + n, 0) - b.results.changed
    if (b.done) b.percent = 100
    else if (perPlay) b.percent = Math.min(99, Math.round((100 * finished) / (perPlay * expected)))
    else b.percent = null
  }
  return batches
}
