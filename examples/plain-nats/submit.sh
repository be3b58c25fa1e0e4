#!/usr/bin/env bash
# Submit a gpufleet job with nothing but bash: the NATS text protocol over a TCP socket.
#
#   bash submit.sh <host> <port> [job-id] [timeout-seconds]
#
# No client library and no Python: gpufleet's intake is a subject, and its events are messages.
#  1. CONNECT, then SUB to a private inbox, to gf.ev.intake.outcomes (where a refused input is
#     recorded) and to a delivery subject for the job's events.
#  2. Ask JetStream, with one request on $JS.API.CONSUMER.CREATE.GF_EVENTS, to push every event of
#     gf.ev.job.<id> to that delivery subject from the first one on (an ephemeral consumer, no acks).
#     A plain `SUB gf.ev.job.<id>` would do too, but it sees only what is published after it.
#  3. PUB the job spec (plain JSON) to gf.in.job.<id>.submit, with the inbox as reply subject: the
#     GF_INTAKE stream stores it and answers {"stream":"GF_INTAKE","seq":N}. (Without a reply subject
#     the publish is fire-and-forget, and the stream still stores it.)
#  4. PING and wait for PONG: the server has read everything sent before it.
#  5. Print each event (its type is the ce-type header, its body the event's JSON) until the job has
#     ended and the outcome of this input is known: a fact with id in-<intake seq>.<n>, or
#     InputAccepted / InputRejected with that intake_seq on gf.ev.intake.outcomes.
#
# The job spec is $GF_SPEC when set, else a job of three tasks that each sleep half a second.
# Exit status: 0 JobCompleted; 1 JobRejected, JobFailed, JobCancelled or InputRejected; 2 timeout;
# 3 bad usage, no connection, a protocol error, or no gpufleet streams on that server.
set -euo pipefail
export LC_ALL=C # lengths and reads in bytes, as the protocol counts them

if [[ $# -lt 2 || $# -gt 4 ]]; then
  echo "usage: bash submit.sh <host> <port> [job-id] [timeout-seconds]" >&2
  exit 3
fi
host=$1
port=$2
job=${3:-sh-$(date +%s)-$$}
timeout=${4:-${GF_TIMEOUT_S:-120}}
spec=${GF_SPEC:-'{"workload":"sleep","params":{"seconds":0.5,"steps":5},"split":{"kind":"count","count":3},"submitter":"plain-nats","retry":{"max_attempts":3,"backoff_s":0.1}}'}
if [[ ! $job =~ ^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$ ]]; then
  echo "invalid job id: $job" >&2
  exit 3
fi
inbox="_INBOX.plain$$x$RANDOM"
deadline=$((SECONDS + timeout))

if ! exec 3<>"/dev/tcp/$host/$port"; then
  echo "cannot connect to $host:$port" >&2
  exit 3
fi

send() { printf '%s\r\n' "$@" >&3; }
pub() { printf 'PUB %s %s %d\r\n%s\r\n' "$1" "$2" "${#3}" "$3" >&3; } # subject, reply-to, payload

# One protocol line from the server into $line (without its CR); fails at the deadline.
next_line() {
  local left=$((deadline - SECONDS))
  ((left > 0)) || return 1
  IFS= read -r -t "$left" -u 3 line || return 1
  line=${line%$'\r'}
}

next_line || { echo "no INFO from $host:$port" >&2; exit 3; }
[[ $line == INFO* ]] || { echo "not a NATS server: $line" >&2; exit 3; }

send 'CONNECT {"verbose":false,"pedantic":false,"lang":"bash","version":"1.0","protocol":1,"headers":true,"no_responders":true,"name":"gpufleet-plain-nats"}'
send "SUB $inbox.r.* 1" "SUB gf.ev.intake.outcomes 2" "SUB $inbox.events 3"
pub '$JS.API.CONSUMER.CREATE.GF_EVENTS' "$inbox.r.consumer" \
  '{"stream_name":"GF_EVENTS","config":{"deliver_subject":"'"$inbox.events"'","filter_subject":"gf.ev.job.'"$job"'","deliver_policy":"all","ack_policy":"none","inactive_threshold":60000000000,"mem_storage":true,"num_replicas":1}}'
pub "gf.in.job.$job.submit" "$inbox.r.ack" "$spec"
send PING

# The orchestrator records exactly one outcome per intake message: facts whose ids are
# in-<intake seq>.<n> (here: JobSubmitted), or InputAccepted / InputRejected on the outcomes channel.
# The script ends once it knows both that outcome and how the job ended (a job submitted earlier
# under the same id may already have ended: its history is replayed).
intake_seq="" # from the intake stream's acknowledgement
facts=" "     # intake sequences named by the ids of the job's events
accepted=""   # our input's outcome is known, and it was not a refusal
ended=""      # the exit status once the job has ended
final=""
early=() # outcomes that arrive before the acknowledgement

maybe_done() {
  [[ -n $intake_seq && -n $ended ]] || return 0
  [[ -n $accepted || $facts == *" $intake_seq "* ]] || return 0
  echo "$final"
  exit "$ended"
}

check_outcome() { # $1 = headers, $2 = body of a message on gf.ev.intake.outcomes
  [[ -n $intake_seq && $2 == *"\"intake_seq\":$intake_seq"[,}]* ]] || return 0
  if [[ $1 == *"ce-type: InputRejected"* ]]; then
    echo "InputRejected: $2"
    exit 1
  fi
  echo "InputAccepted (the same job again: no new fact): $2"
  accepted=1
}

while next_line; do
  case $line in
    PING) send PONG ;;
    PONG) echo "server read everything sent; following job $job" ;;
    +OK) ;;
    -ERR*) echo "server error: $line" >&2; exit 3 ;;
    MSG\ * | HMSG\ *) # MSG <subject> <sid> [reply-to] <bytes>; HMSG ... <header bytes> <total bytes>
      read -r -a f <<<"$line"
      subject=${f[1]}
      sid=${f[2]}
      total=${f[${#f[@]} - 1]}
      hlen=0
      [[ ${f[0]} == HMSG ]] && hlen=${f[${#f[@]} - 2]}
      blob=""
      if ((total > 0)); then
        IFS= read -r -N "$total" -t $((deadline - SECONDS > 0 ? deadline - SECONDS : 1)) -u 3 blob || break
      fi
      IFS= read -r -u 3 _ || break # the CRLF after the payload
      headers=${blob:0:hlen}
      body=${blob:hlen}
      # JetStream pushes each event with its own subject (gf.ev.job.<id>): tell them apart by sid.
      [[ $sid == 1 ]] || subject="sid $sid"
      case $subject in
        "$inbox.r.consumer") # JetStream's answer: the consumer's info, or an error
          if [[ $headers == NATS/1.0\ 503* || $body == *'"error"'* ]]; then
            echo "cannot read the GF_EVENTS stream: ${body:-no JetStream}; is gpufleet running?" >&2
            exit 3
          fi
          ;;
        "$inbox.r.ack") # the intake stream's acknowledgement, or a 503 status when no stream stores it
          if [[ $headers == NATS/1.0\ 503* ]]; then
            echo "no JetStream stream stores gf.in.job.$job.submit: is gpufleet running?" >&2
            exit 3
          fi
          if [[ $body =~ \"seq\":([0-9]+) ]]; then
            intake_seq=${BASH_REMATCH[1]}
            echo "submitted $job: $body"
            for o in "${early[@]}"; do check_outcome "${o%%$'\x1f'*}" "${o#*$'\x1f'}"; done
            early=()
            maybe_done
          else
            echo "intake refused the publish: $headers $body" >&2
            exit 3
          fi
          ;;
        "sid 2") # gf.ev.intake.outcomes
          if [[ -z $intake_seq ]]; then early+=("$headers"$'\x1f'"$body"); else check_outcome "$headers" "$body"; fi
          maybe_done
          ;;
        "sid 3") # an event of gf.ev.job.<id>, pushed to $inbox.events
          type=?
          [[ $headers =~ ce-type:\ *([A-Za-z0-9]+) ]] && type=${BASH_REMATCH[1]}
          printf '%-18s %s\n' "$type" "$body"
          [[ $headers =~ ce-id:\ *in-([0-9]+)\. ]] && facts+="${BASH_REMATCH[1]} "
          case $type in
            JobCompleted) ended=0 final="job $job: $type" ;;
            JobRejected | JobFailed | JobCancelled) ended=1 final="job $job: $type" ;;
          esac
          maybe_done
          ;;
      esac
      ;;
  esac
done
if ((SECONDS < deadline)); then
  echo "the server closed the connection" >&2
  exit 3
fi
echo "timeout: job $job did not end within ${timeout}s" >&2
exit 2
