#!/usr/bin/env node
// Submit a gpufleet job from Node.js and follow it to the end: no gpufleet library, only NATS.
//
//   node submit.mjs <nats-url> [job-id] [--spec job.json] [--timeout seconds]
//
// 1. The job spec is plain JSON (schemas/intake/job.submit.json), published with a JetStream publish
//    to gf.in.job.<job-id>.submit: the intake stream acknowledges it with its sequence number.
// 2. The job's events live on gf.ev.job.<job-id> in the GF_EVENTS stream, in CloudEvents binary mode:
//    the event type is the `ce-type` header and the body is the event's JSON
//    (schemas/events/<type>.v<n>.json). An ordered consumer reads them from the start of that subject.
// 3. An input the orchestrator refuses outright (an invalid spec) never becomes a job event: it is
//    recorded as InputRejected on gf.ev.intake.outcomes, with the intake sequence from step 1.
//
// Exit status: 0 JobCompleted; 1 JobRejected, JobFailed, JobCancelled or InputRejected; 2 timeout;
// 3 bad usage or no connection.

import { readFile } from "node:fs/promises";
import { connect, DeliverPolicy } from "nats";

const EVENTS_STREAM = process.env.GF_EVENTS_STREAM ?? "GF_EVENTS";
const DONE = { JobCompleted: 0, JobRejected: 1, JobFailed: 1, JobCancelled: 1 };

// A job of three tasks that each sleep half a second: every provider, simulated or real, runs it.
const DEFAULT_SPEC = {
  workload: "sleep",
  params: { seconds: 0.5, steps: 5 },
  split: { kind: "count", count: 3 },
  submitter: "node-example",
  retry: { max_attempts: 3, backoff_s: 0.1 },
};

function usage(message) {
  if (message) console.error(`error: ${message}`);
  console.error("usage: node submit.mjs <nats-url> [job-id] [--spec job.json] [--timeout seconds]");
  process.exit(3);
}

function parseArgs(argv) {
  const out = { timeoutS: 120, specPath: null, positional: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--spec") out.specPath = argv[++i] ?? usage("--spec needs a file");
    else if (a === "--timeout") out.timeoutS = Number(argv[++i]);
    else if (a === "-h" || a === "--help") usage();
    else out.positional.push(a);
  }
  if (out.positional.length < 1 || out.positional.length > 2) usage();
  if (!(out.timeoutS > 0)) usage("--timeout must be a positive number of seconds");
  return out;
}

const args = parseArgs(process.argv.slice(2));
const [url, jobIdArg] = args.positional;
const jobId = jobIdArg ?? `node-${Date.now().toString(36)}`;
if (!/^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/.test(jobId)) usage(`invalid job id ${JSON.stringify(jobId)}`);
const spec = args.specPath ? JSON.parse(await readFile(args.specPath, "utf8")) : DEFAULT_SPEC;

const intakeSubject = `gf.in.job.${jobId}.submit`;
const jobSubject = `gf.ev.job.${jobId}`;
const outcomesSubject = "gf.ev.intake.outcomes";

let nc;
try {
  nc = await connect({ servers: url, name: "gpufleet-node-submitter" });
} catch (e) {
  console.error(`cannot connect to ${url}: ${e.message}`);
  process.exit(3);
}
const js = nc.jetstream();

let finished = false;
async function finish(code, why) {
  if (finished) return;
  finished = true;
  console.log(why);
  clearTimeout(timer);
  await nc.drain().catch(() => {});
  process.exit(code);
}
const timer = setTimeout(
  () => finish(2, `timeout: job ${jobId} did not end within ${args.timeoutS}s`),
  args.timeoutS * 1000,
);

// The orchestrator records exactly one outcome for each intake message: facts whose event ids are
// in-<intake seq>.<n> (here: JobSubmitted), or InputAccepted / InputRejected on gf.ev.intake.outcomes.
// The script ends once it knows both that outcome and how the job ended: a job submitted earlier under
// the same id may have ended already, and its history is replayed.
let intakeSeq = null; // from the intake stream's acknowledgement
let settled = false; // our input's outcome is known, and it was not a refusal
let ended = null; // [exit status, line] once the job has ended
const early = []; // outcomes that arrive before the acknowledgement

function maybeDone() {
  if (settled && ended) finish(...ended);
}

function checkOutcome(type, body) {
  if (body.intake_seq !== intakeSeq) return;
  if (type === "InputRejected") {
    finish(1, `InputRejected: ${body.reason}${body.field ? ` (field ${body.field})` : ""}`);
  } else if (type === "InputAccepted") {
    console.log(`InputAccepted: ${body.note || "no new fact"} (the same job again); its history follows`);
    settled = true;
    maybeDone();
  }
}

// Watch the outcomes from now on, before publishing, so the one for our input cannot be missed.
const outcomes = await (
  await js.consumers.get(EVENTS_STREAM, { filterSubjects: outcomesSubject, deliver_policy: DeliverPolicy.New })
).consume();
(async () => {
  for await (const m of outcomes) {
    const type = m.headers?.get("ce-type");
    const body = m.json();
    if (intakeSeq === null) early.push([type, body]);
    else checkOutcome(type, body);
  }
})();

// Submit: a JetStream publish, so the intake stream's acknowledgement says the job was stored.
const ack = await js.publish(intakeSubject, JSON.stringify(spec), { timeout: 10_000 }).catch((e) => {
  console.error(`publish to ${intakeSubject} failed: ${e.message}`);
  process.exit(3);
});
intakeSeq = ack.seq;
console.log(`submitted ${jobId}: ${ack.stream} seq ${ack.seq}${ack.duplicate ? " (duplicate)" : ""}`);
for (const [type, body] of early.splice(0)) checkOutcome(type, body);

// Follow the job's own subject from its first event: an ordered consumer starts at the beginning of
// the stream unless told otherwise (don't pass deliver_policy "all": nats.js 2.x then also sends a start
// sequence, which the server refuses).
const events = await (await js.consumers.get(EVENTS_STREAM, { filterSubjects: jobSubject })).consume();
for await (const m of events) {
  const type = m.headers?.get("ce-type") ?? "?";
  const { type: _t, v: _v, ...fields } = m.json();
  console.log(`${String(m.seq).padStart(6)}  ${m.headers?.get("ce-time") ?? ""}  ${type.padEnd(18)} ${JSON.stringify(fields)}`);
  if (m.headers?.get("ce-id")?.startsWith(`in-${intakeSeq}.`)) settled = true;
  if (type in DONE) ended = [DONE[type], `job ${jobId}: ${type}`];
  maybeDone();
}
