// Progress of a deployment, per batch, from its event stream.
//
// Ansible runs a play once per `serial` batch, and each run starts with a
// `playbook_on_play_start` event: that is where a batch begins (a playbook with several plays,
// like deploy.yml's cores-then-edges, has batches of each). Within a batch, every
// `playbook_on_task_start` is a task and every runner_on_* result is one host finishing one
// task. A play's task count is only known once one of its batches has ended, so a play's first
// batch shows tasks started with an indeterminate bar; its later batches measure against it.
// A batch ends with the next play start, or the playbook's stats or final status.

const RESULTS = {
  runner_on_ok: 'ok',
  runner_on_failed: 'failed',
  runner_on_skipped: 'skipped',
  runner_on_unreachable: 'unreachable',
}
const FINAL = ['successful', 'failed', 'canceled', 'timeout']

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
    outcome: null,
  }
}

/**
 * The batches seen so far, in order: [{playbook, index, play, hosts, tasks, task, results,
 * done, outcome, percent}]; `percent` is null while it cannot be measured yet, `outcome` is
 * the run's final status when it ended in this batch other than successfully.
 */
export function batchesOf(events) {
  const batches = []
  let current = null
  for (const e of events) {
    if (e.event === 'playbook_on_play_start') {
      if (current) current.done = true
      const index = batches.filter((b) => b.playbook === e.playbook).length
      current = newBatch(e.playbook, index, e.data.play || '')
      batches.push(current)
    } else if (!current || current.playbook !== e.playbook) {
      continue
    } else if (e.event === 'playbook_on_task_start') {
      current.tasks += 1
      current.task = e.task || ''
    } else if (RESULTS[e.event]) {
      if (e.host) current.hosts.add(e.host)
      current.results[RESULTS[e.event]] += 1
      if (e.event === 'runner_on_ok' && e.data.changed) current.results.changed += 1
    } else if (e.event === 'playbook_on_stats') {
      current.done = true
    } else if (e.event === 'runner_status' && FINAL.includes(e.data.status)) {
      current.done = true
      if (e.data.status !== 'successful') current.outcome = e.data.status // stopped short
    }
  }
  const tasksPerPlay = {}
  for (const b of batches) {
    const key = `${b.playbook}/${b.play}`
    if (b.done && !(key in tasksPerPlay)) tasksPerPlay[key] = b.tasks
  }
  for (const b of batches) {
    const perPlay = tasksPerPlay[`${b.playbook}/${b.play}`]
    const finished = Object.values(b.results).reduce((a, n) => a + n, 0) - b.results.changed
    if (b.done) b.percent = 100
    else if (perPlay) b.percent = Math.min(99, Math.round((100 * finished) / (perPlay * Math.max(b.hosts.size, 1))))
    else b.percent = null
  }
  return batches
}
