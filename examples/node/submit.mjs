#!/usr/bin/env node
// Submit a gpufleet job from Node.js and follow it to the end: no gpufleet library, only NATS.
//
//   node submit.mjs <nats-url> <creds-file> [job-name] [--spec job.json] [--timeout seconds]
//
// 0. The network admits only known identities: <creds-file> is a standard NATS credentials file of a
//    submitter (`gpufleet creds issue submitter NAME --out NAME.creds` on the network's machine). The
//    submitter's NAME is the `name` claim of the user JWT in it. Replies may reach this client only
//    under its own inbox, _INBOX.submitter.<NAME>, so the connection uses that inbox prefix.
// 1. The job spec is plain JSON (schemas/intake/job.submit.json), published with a JetStream publish
//    to gf.in.submitter.<NAME>.submit.<job-name>: the intake stream acknowledges it with its sequence
//    number. The credentials say who submits: the spec names no submitter (if it does, it must be NAME).
//    The job's full id is <NAME>.<job-name>.
// 2. A submitter cannot read the event log directly. It asks the network's event feed, a request /
//    reply service on gf.api.submitter.<NAME>.events, for the events of its own streams after a
//    position: here job.<NAME>.<job>, task.<NAME>.<job>.* and intake.submitter.<NAME> (the outcomes of
//    its inputs). The answer is {"events": [structured CloudEvents], "last": N, "head": M}; asking
//    again with "after": last and "wait_s" > 0 waits (long polling) until there is something new.
// 3. An input the orchestrator refuses outright (an invalid spec) never becomes a job event: it is
//    recorded as InputRejected on intake.submitter.<NAME>, with the intake sequence from step 1.
//
// Exit status: 0 JobCompleted; 1 JobRejected, JobFailed, JobCancelled or InputRejected; 2 timeout;
// 3 bad usage, no connection, refused credentials, or no gpufleet on that server.

import { readFile } from "node:fs/promises";
import { connect, credsAuthenticator, ErrorCode } from "nats";

const DONE = { JobCompleted: 0, JobRejected: 1, JobFailed: 1, JobCancelled: 1 };
const FEED_WAIT_S = 20; // long poll: the feed answers as soon as there is something new
const USAGE = "usage: node submit.mjs <nats-url> <creds-file> [job-name] [--spec job.json] [--timeout seconds]";

// A job of three tasks that each sleep half a second: every provider, simulated or real, runs it.
const DEFAULT_SPEC = {
  workload: "sleep",
  params: { seconds: 0.5, steps: 5 },
  split: { kind: "count", count: 3 },
  retry: { max_attempts: 3, backoff_s: 0.1 },
};

function fail(message) {
  console.error(message);
  process.exit(3);
}

function usage(message) {
  if (message) console.error(`error: ${message}`);
  fail(USAGE);
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
  if (out.positional.length < 2 || out.positional.length > 3) usage();
  if (!(out.timeoutS > 0)) usage("--timeout must be a positive number of seconds");
  return out;
}

// The submitter's name and role, read from the user JWT in a .creds file (not verified: the server does).
function identityOf(credsText, path) {
  const jwt = /-----BEGIN NATS USER JWT-----\s*(\S+)\s*------END NATS USER JWT------/.exec(credsText)?.[1];
  let claims = null;
  try {
    claims = JSON.parse(Buffer.from(jwt.split(".")[1], "base64url").toString("utf8"));
  } catch {
    fail(`${path} is not a NATS credentials file (no readable user JWT)`);
  }
  const role = (claims.nats?.tags ?? []).find((t) => t.startsWith("gf-role:"))?.slice("gf-role:".length);
  if (role !== "submitter" || typeof claims.name !== "string") {
    fail(`${path} holds the credentials of ${role ?? "no gpufleet role"} ${claims.name ?? ""}: a submitter's are needed`);
  }
  return claims.name;
}

const TOKEN = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;
const args = parseArgs(process.argv.slice(2));
const [url, credsPath, jobArg] = args.positional;
const job = jobArg ?? `node-${Date.now().toString(36)}`;
if (!TOKEN.test(job)) usage(`invalid job name ${JSON.stringify(job)} (one token of letters, digits, '-' or '_')`);
const credsText = await readFile(credsPath, "utf8").catch((e) => fail(`cannot read ${credsPath}: ${e.message}`));
const name = identityOf(credsText, credsPath);
let spec = DEFAULT_SPEC;
if (args.specPath) {
  const text = await readFile(args.specPath, "utf8").catch((e) => fail(`cannot read ${args.specPath}: ${e.message}`));
  try {
    spec = JSON.parse(text);
  } catch (e) {
    fail(`${args.specPath} is not JSON: ${e.message}`);
  }
}

const jobId = `${name}.${job}`;
const intakeSubject = `gf.in.submitter.${name}.submit.${job}`;
const feedSubject = `gf.api.submitter.${name}.events`;
const outcomes = `intake.submitter.${name}`;
const streams = [`job.${jobId}`, `task.${jobId}.*`, outcomes];

let nc;
try {
  nc = await connect({
    servers: url,
    name: "gpufleet-node-submitter",
    authenticator: credsAuthenticator(new TextEncoder().encode(credsText)),
    inboxPrefix: `_INBOX.submitter.${name}`,
  });
} catch (e) {
  if (e.code === ErrorCode.AuthorizationViolation) {
    fail(`${url} refused the credentials in ${credsPath} (revoked, expired, or from another network): ${e.message}`);
  }
  fail(`cannot connect to ${url}: ${e.message}`);
}
const js = nc.jetstream();

let finished = false;
async function finish(code, why) {
  if (finished) return;
  finished = true;
  (code === 3 ? console.error : console.log)(why);
  clearTimeout(timer);
  await nc.drain().catch(() => {});
  process.exit(code);
}
const timer = setTimeout(
  () => finish(2, `timeout: job ${jobId} did not end within ${args.timeoutS}s`),
  args.timeoutS * 1000,
);

// Submit: a JetStream publish, so the intake stream's acknowledgement says the job was stored.
let ack;
try {
  ack = await js.publish(intakeSubject, JSON.stringify(spec), { timeout: 10_000 });
} catch (e) {
  const why = e.code === ErrorCode.NoResponders ? "no stream stores it: is gpufleet running?" : e.message;
  await finish(3, `publish to ${intakeSubject} failed: ${why}`);
}
const intakeSeq = ack.seq;
console.log(`submitted ${jobId}: ${ack.stream} seq ${ack.seq}${ack.duplicate ? " (duplicate)" : ""}`);

// The orchestrator records exactly one outcome for each intake message: facts whose event ids are
// in-<intake seq>.<n> (here: JobSubmitted), or InputAccepted / InputRejected on intake.submitter.<NAME>.
// The script ends once it knows both that outcome and how the job ended: a job submitted earlier under
// the same name may have ended already, and its history is replayed. The feed is read from the start
// (position 0), so nothing published before the first request is missed.
let settled = false; // our input's outcome is known, and it was not a refusal
let ended = null; // [exit status, line] once the job has ended

function show(ev) {
  const { type: _t, v: _v, ...fields } = ev.data ?? {};
  console.log(
    `${String(ev.sequence).padStart(6)}  ${ev.time ?? ""}  ${String(ev.type).padEnd(18)} ${ev.subject.padEnd(24)} ${JSON.stringify(fields)}`,
  );
}

function onEvent(ev) {
  if (ev.subject === outcomes) {
    // The outcomes of every input of this submitter: only the one of our submission matters.
    if (ev.data?.intake_seq !== intakeSeq) return;
    if (ev.type === "InputRejected") {
      const d = ev.data;
      return finish(1, `InputRejected: ${d.reason}${d.field ? ` (field ${d.field})` : ""}`);
    }
    if (ev.type === "InputAccepted") {
      console.log(`InputAccepted: ${ev.data.note || "no new fact"}: the same job again, its history is replayed`);
      settled = true;
    }
    return;
  }
  show(ev);
  if (ev.id.startsWith(`in-${intakeSeq}.`)) settled = true;
  if (ev.subject === `job.${jobId}` && ev.type in DONE) ended = [DONE[ev.type], `job ${jobId}: ${ev.type}`];
}

let after = 0;
while (!finished) {
  const request = { streams, after, wait_s: FEED_WAIT_S };
  let doc;
  try {
    const m = await nc.request(feedSubject, JSON.stringify(request), { timeout: (FEED_WAIT_S + 10) * 1000 });
    doc = m.json();
  } catch (e) {
    if (finished) break; // the timeout closed the connection under the request
    if (e.code === ErrorCode.NoResponders) {
      await finish(3, `the event feed (${feedSubject}) does not answer: is gpufleet running?`);
    } else if (e.code === ErrorCode.Timeout) {
      console.error(`the event feed did not answer in time; asking again`);
      continue;
    } else {
      await finish(3, `the event feed failed: ${e.message}`);
    }
    break;
  }
  if (doc.error) {
    await finish(3, `the event feed refused: ${doc.error}${doc.field ? ` (field ${doc.field})` : ""}`);
    break;
  }
  for (const ev of doc.events) {
    onEvent(ev);
    if (finished) break;
  }
  after = Math.max(after, doc.last);
  if (settled && ended) await finish(...ended);
}
