#!/usr/bin/env node
// BullMQ's side of `python -m bench.graphs`: N runs of a graph (a root, a 10-way fan-out
// that reads the root's output, a join) with BullMQ's FlowProducer, against the peers'
// agent (`peers/agent/server.js`), 2 worker processes x concurrency 50 as the peer's.
//
//   node flow.js burst --n 1000 [--fan 10] [--workers 2] [--concurrency 50] [--cap-s 150]
//   node flow.js worker                      (started by `burst`, one per process)
//
// Env: AGENT_URL (http://127.0.0.1:8787), REDIS_URL (redis://127.0.0.1:6379/0),
//      BENCH_QUEUE (stepwise-flows).
//
// The modelling. A BullMQ flow is a tree: a parent runs once all its children have
// completed, and a job has one parent, so ten children cannot all wait for one root job
// in a single tree. The root is therefore the run's first job, and the flow is made from
// its output, as a fan-out that reads a step's output is made in BullMQ:
//   1. `burst` adds N root jobs, delayed to the due instant T (the counterpart of N
//      one-off schedules due at T), then starts the workers;
//   2. a root job calls the agent (step 1, with the list of ten parts as its input) and
//      adds, with FlowProducer, the run's flow: the join as the parent, and as its
//      children the ten fan-out jobs, child i holding part i of the root's answer and the
//      root's answer itself (what a Stepwise step that needs the root is sent);
//   3. each child calls the agent (steps 2..11) and returns the agent's answer;
//   4. the join, run by BullMQ once its ten children have completed, reads their answers
//      (`getChildrenValues`) and calls the agent with them (step 12).
// Every call carries what `peers/bench/analyze.js` reads, as `peers/bullmq/worker.js`
// sends it: `execution_key` (the run, same on retries), `schedule_id`, `step_number`
// (1..12, each call of a run its own), `total_steps` (12) and `scheduled_ms` (T).
// Every job: attempts 3, exponential backoff 2000 ms, as the peer's job template.
//
// `burst` waits until the agent has 12*N distinct 200-answered calls for T (or T+cap),
// stops the workers, wipes the queue and prints ONE JSON line on stdout (progress on
// stderr): {"due_ms", "n", "stop_reason", "cpu_ms": {"workers_total"}, ...}. The
// analysis is the caller's (`analyze.js` on the agent's dump).
'use strict';

const path = require('path');
const { spawn } = require('child_process');
const { Queue, Worker, FlowProducer } = require('bullmq');

const args = process.argv.slice(2);
const opt = (name, def) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : def;
};
const MODE = args[0];
const QUEUE = process.env.BENCH_QUEUE || 'stepwise-flows';
const AGENT_URL = process.env.AGENT_URL || 'http://127.0.0.1:8787';
const FAN = parseInt(opt('--fan', process.env.FAN || '10'), 10);
const TOTAL = FAN + 2;
const JOB_OPTS = {
  attempts: 3,
  backoff: { type: 'exponential', delay: 2000 },
  removeOnComplete: { count: 1000 },
  removeOnFail: { count: 10000 },
};

function connection() {
  const url = new URL(process.env.REDIS_URL || 'redis://127.0.0.1:6379/0');
  return {
    host: url.hostname,
    port: parseInt(url.port || '6379', 10),
    db: parseInt(url.pathname.slice(1) || '0', 10),
    maxRetriesPerRequest: null,
  };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, Math.max(0, ms)));
const cpuMs = () => {
  const u = process.cpuUsage();
  return Math.round((u.user + u.system) / 1000);
};

// --- the worker -------------------------------------------------------------------

async function post(job, step, fields) {
  const { run } = job.data;
  const res = await fetch(AGENT_URL + '/step', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      execution_key: run.execution_key,
      schedule_id: run.schedule_id,
      step_number: step,
      total_steps: TOTAL,
      scheduled_ms: run.scheduled_ms,
      attempt: job.attemptsMade + 1,
      timestamp: new Date().toISOString(),
      sender: `bullmq-flow/${process.env.WORKER_NAME || process.pid}`,
      ...fields,
    }),
    signal: AbortSignal.timeout(30000),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`step ${step} agent answered ${res.status}: ${text.slice(0, 100)}`);
  return JSON.parse(text);
}

function worker() {
  const flows = new FlowProducer({ connection: connection() });
  const processor = async (job) => {
    const { run } = job.data;
    if (job.name === 'root') {
      const parts = Array.from({ length: FAN }, (_, i) => `part ${i}`);
      const output = await post(job, 1, { message: 'plan the parts', input: { parts } });
      await flows.add({
        name: 'join',
        queueName: QUEUE,
        data: { run },
        opts: { ...JOB_OPTS, jobId: `${run.schedule_id}-join` },
        children: output.echo.input.parts.map((item, index) => ({
          name: 'fan',
          queueName: QUEUE,
          data: { run, index, item, root: output },
          opts: { ...JOB_OPTS, jobId: `${run.schedule_id}-fan_${index}` },
        })),
      });
      return output;
    }
    if (job.name === 'fan') {
      const { index, item, root } = job.data;
      return post(job, 2 + index, {
        message: `read ${item}`,
        step_key: `fan_${index}`,
        steps: { root: { output: root } },
      });
    }
    if (job.name === 'join') {
      const values = await job.getChildrenValues();
      const steps = {};
      for (const [key, output] of Object.entries(values)) steps[key.split("-").pop()] = { output };
      return post(job, TOTAL, { message: `join the ${FAN} parts`, step_key: 'join', steps });
    }
    throw new Error(`unknown job ${job.name}`);
  };
  const concurrency = parseInt(process.env.WORKER_CONCURRENCY || '50', 10);
  const w = new Worker(QUEUE, processor, { connection: connection(), concurrency });
  let failed = 0;
  w.on('failed', () => { failed++; });
  w.on('error', (e) => process.stderr.write(`[${process.env.WORKER_NAME}] ${e && e.message}\n`));
  let mark = null;
  process.on('SIGUSR2', () => { mark = cpuMs(); });
  const stop = async () => {
    await w.close();
    await flows.close();
    process.stdout.write(JSON.stringify({
      event: 'summary', failed_attempts: failed, cpu_ms_since_mark: mark == null ? null : cpuMs() - mark,
    }) + '\n');
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  // Warm the HTTP client as the peer's worker does (GET /health is not recorded).
  Promise.all([w.waitUntilReady(), flows.waitUntilReady(), fetch(AGENT_URL + '/health').then((r) => r.text())])
    .then(() => process.stdout.write(JSON.stringify({ event: 'ready' }) + '\n'))
    .catch((e) => { process.stderr.write(`worker failed to start: ${e.message}\n`); process.exit(1); });
}

// --- the driver -------------------------------------------------------------------

function startWorker(i, concurrency) {
  const w = { ready: false, summary: null, exited: false };
  w.proc = spawn(process.execPath, [__filename, 'worker', '--fan', String(FAN)], {
    env: { ...process.env, WORKER_CONCURRENCY: String(concurrency), WORKER_NAME: `w${i}` },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let buf = '';
  w.proc.stdout.on('data', (d) => {
    buf += d.toString();
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      try {
        const m = JSON.parse(line);
        if (m.event === 'ready') w.ready = true;
        if (m.event === 'summary') w.summary = m;
      } catch (e) { process.stderr.write(`w${i}: ${line}\n`); }
    }
  });
  w.proc.on('exit', () => { w.exited = true; });
  return w;
}

async function stats(dueMs) {
  const r = await fetch(`${AGENT_URL}/stats?scheduled_ms=${dueMs}`);
  return r.json();
}

const ws = []; // the worker processes (killed if the driver fails)

async function burst() {
  const n = parseInt(opt('--n', '1000'), 10);
  const workers = parseInt(opt('--workers', '2'), 10);
  const concurrency = parseInt(opt('--concurrency', '50'), 10);
  const capS = Number(opt('--cap-s', '150'));
  const log = (m) => process.stderr.write(`[flows] ${m}\n`);
  const queue = new Queue(QUEUE, { connection: connection() });
  await queue.obliterate({ force: true });
  // T: a whole second with room to add the roots and start the workers.
  const roomMs = 3000 + 2 * n + 1000 * workers;
  const dueMs = Math.ceil((Date.now() + roomMs) / 1000) * 1000;
  const roots = [];
  for (let i = 0; i < n; i++) {
    const scheduleId = `run-${String(i).padStart(6, '0')}`;
    const run = { schedule_id: scheduleId, execution_key: `${scheduleId}@${dueMs}`, scheduled_ms: dueMs };
    roots.push({ name: 'root', data: { run }, opts: { ...JOB_OPTS, jobId: `${scheduleId}-root`, delay: dueMs - Date.now() } });
  }
  for (let i = 0; i < roots.length; i += 1000) await queue.addBulk(roots.slice(i, i + 1000));
  ws.push(...Array.from({ length: workers }, (_, i) => startWorker(i, concurrency)));
  const until = Date.now() + 20000;
  while (ws.some((w) => !w.ready && !w.exited) && Date.now() < until) await sleep(50);
  if (ws.some((w) => !w.ready)) throw new Error('workers did not become ready');
  const anomalies = [];
  if (Date.now() > dueMs) anomalies.push(`ready ${Date.now() - dueMs} ms after the due instant`);
  log(`N=${n}: ${n} roots delayed to T, workers ready ${dueMs - Date.now()} ms before T`);
  for (const w of ws) w.proc.kill('SIGUSR2');
  await sleep(dueMs - Date.now());
  let stopReason = 'cap';
  for (;;) {
    const st = await stats(dueMs);
    if (st.unique_ok_steps >= n * TOTAL) { stopReason = 'all_steps'; break; }
    if (Date.now() >= dueMs + capS * 1000) break;
    await sleep(250);
  }
  const stoppedAt = Date.now() - dueMs;
  for (const w of ws) w.proc.kill('SIGTERM');
  const stopUntil = Date.now() + 30000;
  while (ws.some((w) => !w.exited) && Date.now() < stopUntil) await sleep(50);
  for (const w of ws) if (!w.exited) { w.proc.kill('SIGKILL'); anomalies.push('a worker was killed'); }
  const counts = await queue.getJobCounts('wait', 'active', 'delayed', 'waiting-children', 'failed');
  await queue.obliterate({ force: true });
  await queue.close();
  const sum = (k) => ws.reduce((a, w) => a + ((w.summary && w.summary[k]) || 0), 0);
  process.stdout.write(JSON.stringify({
    system: 'bullmq-flow', bullmq_version: require('bullmq/package.json').version, n, fan: FAN,
    workers, concurrency, due_ms: dueMs, stop_reason: stopReason, stopped_at_ms_after_due: stoppedAt,
    counts_at_stop: counts, failed_attempts: sum('failed_attempts'),
    cpu_ms: { workers_total: sum('cpu_ms_since_mark') }, anomalies,
  }) + '\n');
}

if (MODE === 'worker') {
  worker();
} else if (MODE === 'burst') {
  const kill = () => { for (const w of ws) if (!w.exited) w.proc.kill('SIGKILL'); };
  const watchdog = setTimeout(() => { process.stderr.write('[flows] watchdog\n'); kill(); process.exit(3); }, 290000);
  watchdog.unref();
  burst().then(() => process.exit(0)).catch((e) => {
    process.stderr.write(`[flows] ${e && e.stack || e}\n`);
    kill();
    process.exit(1);
  });
} else {
  process.stderr.write('usage: node flow.js burst --n N [--fan 10] | node flow.js worker\n');
  process.exit(2);
}
