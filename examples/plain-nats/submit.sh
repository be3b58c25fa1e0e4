#!/usr/bin/env bash
# Submit a gpufleet job with nothing but bash: the NATS text protocol over a TCP socket.
#
#   bash submit.sh <host> <port> <bearer-creds-file> [job-name] [timeout-seconds]
#
# No client library and no Python: gpufleet's intake is a subject, and its events come from a
# request / reply service.
#  0. The network admits only known identities. A shell cannot sign the server's nonce with an nkey,
#     so this script needs a *bearer* credential of a submitter, whose JWT alone authenticates:
#     `gpufleet creds issue submitter NAME --bearer --out NAME.creds` on the network's machine. Keep it
#     like a password. The submitter's NAME is the `name` claim of the JWT (decoded here in bash).
#  1. CONNECT with that JWT and PING: PONG says the server took the credential (else it answers
#     -ERR 'Authorization Violation' and closes). Then SUB to a private inbox under
#     _INBOX.submitter.<NAME>: the only subjects a submitter may subscribe to, so every reply it gets
#     is its own.
#  2. PUB the job spec (plain JSON, naming no submitter: the credential says who submits) to
#     gf.in.submitter.<NAME>.submit.<job-name>, with the inbox as reply subject: the GF_INTAKE stream
#     stores it and answers {"stream":"GF_INTAKE","seq":N}. The job's full id is <NAME>.<job-name>.
#     (Without a reply subject the publish is fire-and-forget, and the stream still stores it.)
#  3. PING and wait for PONG: the server has read everything sent before it.
#  4. A submitter cannot read the event log itself: it asks the network's event feed. Each request,
#     published to gf.api.submitter.<NAME>.events with the inbox as reply subject, names the streams
#     (job.<NAME>.<job>, task.<NAME>.<job>.* and intake.submitter.<NAME>, where the outcomes of this
#     submitter's inputs are recorded), a position to read after (0 at first) and how long to wait for
#     something new (wait_s). The answer is one JSON message {"events":[...],"last":N,"head":M}; each
#     event is a structured CloudEvent ({"specversion":"1.0","id":...,"type":...,"subject":...,
#     "sequence":...,"data":{...}}). The next request reads after "last".
#  5. Print each event until the job has ended and the outcome of this input is known: a fact with id
#     in-<intake seq>.<n>, or InputAccepted / InputRejected with that intake_seq on
#     intake.submitter.<NAME>. The JSON is taken apart with bash regexes, which is enough for this
#     feed's compact, machine-written answers; a real client uses a JSON parser.
#
# The job spec is $GF_SPEC when set, else a job of three tasks that each sleep half a second.
# Exit status: 0 JobCompleted; 1 JobRejected, JobFailed, JobCancelled or InputRejected; 2 timeout;
# 3 bad usage, no connection, refused credentials, a protocol error, or no gpufleet on that server.
set -euo pipefail
export LC_ALL=C # lengths and reads in bytes, as the protocol counts them

if [[ $# -lt 3 || $# -gt 5 ]]; then
  echo "usage: bash submit.sh <host> <port> <bearer-creds-file> [job-name] [timeout-seconds]" >&2
  exit 3
fi
host=$1
port=$2
creds=$3
printf -v job 'sh-%(%s)T-%d' -1 "$$"
job=${4:-$job}
timeout=${5:-${GF_TIMEOUT_S:-120}}
spec=${GF_SPEC:-'{"workload":"sleep","params":{"seconds":0.5,"steps":5},"split":{"kind":"count","count":3},"retry":{"max_attempts":3,"backoff_s":0.1}}'}
if [[ ! $job =~ ^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$ ]]; then
  echo "invalid job name: $job (one token of letters, digits, '-' or '_')" >&2
  exit 3
fi
if [[ ! $timeout =~ ^[0-9]+$ ]] || ((timeout < 1)); then
  echo "invalid timeout: $timeout (whole seconds)" >&2
  exit 3
fi

# base64url (the JWT's encoding) into $decoded, in bash.
b64url_decode() {
  local alphabet=ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_
  local in=$1 c v i bits=0 n=0 hex
  decoded=""
  for ((i = 0; i < ${#in}; i++)); do
    c=${in:i:1}
    if [[ $c == "=" ]]; then break; fi
    v=${alphabet%%"$c"*}
    if ((${#v} >= 64)); then return 1; fi
    bits=$(((bits << 6) | ${#v}))
    n=$((n + 6))
    if ((n >= 8)); then
      n=$((n - 8))
      printf -v hex '%02x' $(((bits >> n) & 255))
      printf -v c '%b' "\\x$hex"
      decoded+=$c
      bits=$((bits & ((1 << n) - 1)))
    fi
  done
}

# The credential: the user JWT, and the submitter's name in it (the server checks the JWT's signature).
if [[ ! -r $creds ]]; then
  echo "cannot read the credentials file $creds" >&2
  exit 3
fi
creds_text=$(<"$creds")
if [[ ! $creds_text =~ -----BEGIN\ NATS\ USER\ JWT-----[[:space:]]*([A-Za-z0-9_.-]+) ]]; then
  echo "$creds is not a NATS credentials file (no user JWT)" >&2
  exit 3
fi
jwt=${BASH_REMATCH[1]}
IFS=. read -r _ payload _ <<<"$jwt"
decoded=""
b64url_decode "$payload" || true
if [[ ! $decoded =~ \"name\":\"([A-Za-z0-9_-]+)\" ]]; then
  echo "$creds holds no readable user JWT" >&2
  exit 3
fi
name=${BASH_REMATCH[1]}
if [[ $decoded != *'"gf-role:submitter"'* ]]; then
  echo "$creds is not a submitter's credential (name $name): a submitter's bearer credential is needed" >&2
  exit 3
fi

job_id="$name.$job"
inbox="_INBOX.submitter.$name.sh$$x$RANDOM"
outcomes="intake.submitter.$name"
streams='["job.'"$job_id"'","task.'"$job_id"'.*","'"$outcomes"'"]'
deadline=$((SECONDS + timeout + 1)) # $SECONDS counts whole seconds: never give up early

if ! exec 3<>"/dev/tcp/$host/$port"; then
  echo "cannot connect to $host:$port" >&2
  exit 3
fi

# A write to a connection the server has closed fails instead of killing the script: the reads that
# follow find out why (-ERR, or the end of the connection).
trap '' PIPE
send() { printf '%s\r\n' "$@" >&3 2>/dev/null || true; }
pub() { printf 'PUB %s %s %d\r\n%s\r\n' "$1" "$2" "${#3}" "$3" >&3 2>/dev/null || true; } # subject, reply-to, payload

# One protocol line from the server into $line (without its CR). Fails at the deadline, or when the
# reply awaited is overdue ($overdue_at), or at the end of the connection; $why says which.
partial="" # a line cut by a timeout, kept for the next read
overdue_at=0
next_line() {
  local until=$deadline chunk rc
  if ((overdue_at > 0 && overdue_at < until)); then until=$overdue_at; fi
  if ((until - SECONDS <= 0)); then
    why=timeout
    return 1
  fi
  IFS= read -r -t $((until - SECONDS)) -u 3 chunk && {
    line=$partial${chunk%$'\r'}
    partial=""
    return 0
  }
  rc=$?
  if ((rc > 128)); then
    partial+=$chunk
    why=timeout
  else
    why=closed
  fi
  return 1
}

next_line || { echo "no INFO from $host:$port" >&2; exit 3; }
[[ $line == INFO* ]] || { echo "not a NATS server: $line" >&2; exit 3; }

send 'CONNECT {"jwt":"'"$jwt"'","verbose":false,"pedantic":false,"lang":"bash","version":"1.0","protocol":1,"headers":true,"no_responders":true,"name":"gpufleet-plain-nats"}'
send PING
waiting=connect # what is awaited: the PONG to CONNECT, the intake stream's acknowledgement, the feed's answers
overdue_at=$((SECONDS + 10))

submit() {
  send "SUB $inbox.* 1"
  pub "gf.in.submitter.$name.submit.$job" "$inbox.ack" "$spec"
  send PING
  waiting=ack
  overdue_at=$((SECONDS + 10))
}

# The orchestrator records exactly one outcome per intake message: facts whose ids are
# in-<intake seq>.<n> (here: JobSubmitted), or InputAccepted / InputRejected on intake.submitter.<NAME>.
# The script ends once it knows both that outcome and how the job ended (a job submitted earlier
# under the same name may already have ended: its history is replayed).
intake_seq="" # from the intake stream's acknowledgement
settled=""    # our input's outcome is known, and it was not a refusal
ended=""      # the exit status once the job has ended
final=""
after=0  # the feed's position read up to
asked=0  # feed requests sent; the answer awaited is on $inbox.f<asked>

ask_feed() {
  local left=$((deadline - SECONDS)) wait_s=5
  ((left < wait_s)) && wait_s=$((left > 0 ? left : 0))
  asked=$((asked + 1))
  pub "gf.api.submitter.$name.events" "$inbox.f$asked" \
    '{"streams":'"$streams"',"after":'"$after"',"wait_s":'"$wait_s"',"limit":100}'
  waiting=feed
  overdue_at=$((SECONDS + wait_s + 10))
}

maybe_done() {
  if [[ -n $settled && -n $ended ]]; then
    echo "$final"
    exit "$ended"
  fi
}

# One event of the feed's answer: the text after '{"specversion":"1.0","id":"', up to its closing brace.
re_event='^([^"]*)","source":"[^"]*","type":"([A-Za-z0-9]+)","subject":"([^"]*)","time":"([^"]*)","datacontenttype":"[^"]*"(,"correlationid":"[^"]*")?(,"causationid":"[^"]*")?,"sequence":([0-9]+),"data":(\{.*\})\}$'
on_event() {
  [[ $1 =~ $re_event ]] || { echo "cannot read an event: ${1:0:200}" >&2; exit 3; }
  local id=${BASH_REMATCH[1]} type=${BASH_REMATCH[2]} subject=${BASH_REMATCH[3]} time=${BASH_REMATCH[4]}
  local seq=${BASH_REMATCH[7]} data=${BASH_REMATCH[8]}
  if [[ $subject == "$outcomes" ]]; then
    # The outcomes of every input of this submitter: only the one of our submission matters.
    [[ $data =~ \"intake_seq\":([0-9]+) && ${BASH_REMATCH[1]} == "$intake_seq" ]] || return 0
    case $type in
      InputRejected) echo "InputRejected: $data"; exit 1 ;;
      InputAccepted) echo "InputAccepted (the same job again: no new fact; its history is replayed): $data"; settled=1 ;;
    esac
    return 0
  fi
  [[ $data =~ ^\{\"type\":\"[A-Za-z0-9]+\",\"v\":[0-9]+,?(.*)$ ]] && data="{${BASH_REMATCH[1]}"
  printf '%6s  %s  %-18s %-24s %s\n' "$seq" "$time" "$type" "$subject" "$data"
  [[ $id == "in-$intake_seq."* ]] && settled=1
  if [[ $subject == "job.$job_id" ]]; then
    case $type in
      JobCompleted) ended=0 final="job $job_id: $type" ;;
      JobRejected | JobFailed | JobCancelled) ended=1 final="job $job_id: $type" ;;
    esac
  fi
  return 0
}

# The feed's answer: {"events":[<event>,...],"last":N,"head":M}, or {"error":"...","field":...}.
on_answer() {
  local body=$1 events chunk event="" delim='{"specversion":"1.0","id":"'
  if [[ ! $body =~ \],\"last\":([0-9]+),\"head\":([0-9]+)\}$ ]]; then
    echo "the event feed refused: $body" >&2
    exit 3
  fi
  after=${BASH_REMATCH[1]}
  events=${body#\{\"events\":\[}
  events=${events%\],\"last\":*}
  # Split before each event's start. Text inside "data" that looks like an event's start (a label
  # named "specversion"...) is glued back on: a real event's start is followed by its attributes.
  while [[ -n $events ]]; do
    events=${events#"$delim"}
    if [[ $events == *"$delim"* ]]; then
      chunk=${events%%"$delim"*}
      events=${events:${#chunk}}
    else
      chunk=$events
      events=""
    fi
    if [[ -n $event && $chunk =~ ^[^\"]*\",\"source\":\"[^\"]*\",\"type\":\"[A-Za-z0-9]+\",\"subject\": ]]; then
      on_event "${event%,}"
      event=""
    fi
    event+=${event:+$delim}$chunk
  done
  if [[ -n $event ]]; then on_event "$event"; fi
  return 0
}

while true; do
  if ! next_line; then
    if [[ $why == closed ]]; then
      echo "the server closed the connection" >&2
      exit 3
    fi
    if ((SECONDS >= deadline)); then
      echo "timeout: job $job_id did not end within ${timeout}s" >&2
      exit 2
    fi
    if [[ $waiting == connect ]]; then
      echo "no answer from $host:$port to CONNECT" >&2
      exit 3
    fi
    if [[ $waiting == ack ]]; then
      echo "no acknowledgement for the job from the intake stream: is gpufleet running?" >&2
      exit 3
    fi
    echo "the event feed did not answer in time; asking again" >&2
    ask_feed
    continue
  fi
  case $line in
    PING) send PONG ;;
    PONG)
      if [[ $waiting == connect ]]; then
        echo "connected as submitter $name"
        submit
      else
        echo "server read everything sent; following job $job_id"
      fi
      ;;
    +OK | INFO*) ;;
    -ERR*Authorization\ Violation*)
      echo "the server refused the credentials in $creds (revoked, expired, not a bearer credential, or from another network): $line" >&2
      exit 3
      ;;
    -ERR*Permissions\ Violation*)
      echo "the server does not let submitter $name do this: $line" >&2
      exit 3
      ;;
    -ERR*) echo "server error: $line" >&2; exit 3 ;;
    MSG\ * | HMSG\ *) # MSG <subject> <sid> [reply-to] <bytes>; HMSG ... <header bytes> <total bytes>
      read -r -a f <<<"$line"
      subject=${f[1]}
      total=${f[${#f[@]} - 1]}
      hlen=0
      [[ ${f[0]} == HMSG ]] && hlen=${f[${#f[@]} - 2]}
      blob=""
      if ((total > 0)); then
        IFS= read -r -N "$total" -t $((deadline - SECONDS > 5 ? deadline - SECONDS : 5)) -u 3 blob || {
          echo "the server sent a truncated message" >&2
          exit 3
        }
      fi
      IFS= read -r -u 3 _ || true # the CRLF after the payload
      headers=${blob:0:hlen}
      body=${blob:hlen}
      case $subject in
        "$inbox.ack") # the intake stream's acknowledgement, or a 503 status when no stream stores it
          if [[ $headers == NATS/1.0\ 503* ]]; then
            echo "no JetStream stream stores gf.in.submitter.$name.submit.$job: is gpufleet running?" >&2
            exit 3
          fi
          if [[ $body =~ \"seq\":([0-9]+) && $body != *'"error"'* ]]; then
            intake_seq=${BASH_REMATCH[1]}
            echo "submitted $job_id: $body"
            ask_feed
          else
            echo "intake refused the publish: $headers $body" >&2
            exit 3
          fi
          ;;
        "$inbox.f$asked") # the event feed's answer to the latest request
          if [[ $headers == NATS/1.0\ 503* ]]; then
            echo "the event feed (gf.api.submitter.$name.events) does not answer: is gpufleet running?" >&2
            exit 3
          fi
          on_answer "$body"
          maybe_done
          ask_feed
          ;;
        *) ;; # an answer to an earlier request, overtaken by a retry
      esac
      ;;
  esac
done
