// callkit.js: the callkit browser SDK. One ES module, no build step, no dependencies.
//
//   import { CallEngine, CallMediaType } from "/sdk/callkit.js";
//   const engine = CallEngine.create("ws://127.0.0.1:8765/ws");
//   engine.on("onCallReceived", (res) => engine.accept());
//   await engine.init(sdkAppId, userId, userSig);
//   await engine.call("bob", CallMediaType.VIDEO, { timeout: 30, userData: "" });
//
// The API is the Python engine's (callkit.CallEngine) in JavaScript naming, with the same 17
// TUICallKit events and payload keys. The wire protocol is docs/protocol.md; the meters
// (voice volume, network quality) follow DESIGN section 4 / docs/events.md exactly, and
// tests/vectors/meters.json checks them against the Python functions.

export const PROTOCOL_VERSION = 1;

export const CallMediaType = Object.freeze({ AUDIO: 1, VIDEO: 2 });
export const CallRole = Object.freeze({ CALLER: 1, CALLED: 2 });
export const NetworkQuality = Object.freeze({
  UNKNOWN: 0, EXCELLENT: 1, GOOD: 2, POOR: 3, BAD: 4, VERY_BAD: 5, DOWN: 6,
});
export const ErrorCode = Object.freeze({
  PERMISSION_DENIED: -1101,
  INIT_FAIL: -1201,
  PARAM_INVALID: -1202,
  REQUEST_REFUSED: -1203,
  REQUEST_REPEATED: -1204,
  SCENE_NOT_SUPPORTED: -1205,
  MEDIA_FAILED: -1301,
  SIGNALING_SEND_FAIL: -1401,
});

export const EVENT_NAMES = Object.freeze([
  "onError", "onCallReceived", "onCallCancelled", "onCallBegin", "onCallEnd",
  "onCallMediaTypeChanged", "onUserReject", "onUserNoResponse", "onUserLineBusy",
  "onUserJoin", "onUserLeave", "onUserVideoAvailable", "onUserAudioAvailable",
  "onUserVoiceVolumeChanged", "onUserNetworkQualityChanged", "onKickedOffline",
  "onUserSigExpired",
]);

/** An error with TUICallKit's numeric code (see ErrorCode). */
export class CallError extends Error {
  constructor(code, message) {
    super(`${message} (code ${code})`);
    this.name = "CallError";
    this.code = code;
    this.msg = message;
  }
}

const USER_ID_RE = /^[A-Za-z0-9_-]{1,32}$/;
const MAX_CALLEES = 8;
const REQUEST_TIMEOUT = 10000; // ms
const HEARTBEAT = 2000; // ms between pings; silence for 1.5x this drops the link
const CONNECT_TIMEOUT = 10000; // ms for a peer connection to reach "connected"
const GATHER_WAIT = 2000; // ms to wait for ICE gathering before sending an SDP anyway
const FULL_SCALE = 32768;

// ----------------------------------------------------------------------------- meters (pure)

/** TUICallKit volume 0..100 from a dBFS level: clamp(round(2*(level+60)), 0, 100). */
export function volumeFromDbfs(level) {
  if (Number.isNaN(level) || level <= -60) return 0;
  if (level >= -10) return 100;
  return Math.max(0, Math.min(100, pyRound(2 * (level + 60))));
}

/** dBFS of a sum of squares over `count` samples in int16 units (-Infinity when silent). */
export function dbfsFromSums(sumSq, count) {
  if (count <= 0 || sumSq <= 0) return -Infinity;
  return 20 * Math.log10(Math.sqrt(sumSq / count) / FULL_SCALE);
}

/** RMS level in dBFS of int16 samples (an array or Int16Array). */
export function rmsDbfs(samples) {
  let sumSq = 0;
  for (const x of samples) sumSq += x * x;
  return dbfsFromSums(sumSq, samples.length);
}

/** Quality score S (100 best) from RTT (ms), jitter (ms) and loss (%), DESIGN section 4. */
export function qualityScore(rttMs, jitterMs, lossPct) {
  const rtt = clean(rttMs);
  const jitter = clean(jitterMs);
  const p = Math.min(100, clean(lossPct));
  const d = rtt / 2 + 2 * jitter;
  const id = d > 177.3 ? 0.024 * d + 0.11 * (d - 177.3) : 0.024 * d;
  return 100 - id - (100 * p) / (p + 10);
}

/** Level 1..5 from a score: >=80 EXCELLENT, >=70 GOOD, >=60 POOR, >=50 BAD, else VERY_BAD. */
export function levelFromScore(s) {
  if (s >= 80) return 1;
  if (s >= 70) return 2;
  if (s >= 60) return 3;
  if (s >= 50) return 4;
  return 5;
}

/** Level 1..5 for one measurement; a missing RTT or jitter counts as 0 ms. */
export function qualityLevel(rttMs, jitterMs, lossPct) {
  return levelFromScore(qualityScore(rttMs ?? 0, jitterMs ?? 0, lossPct));
}

/** Worst of several levels; UNKNOWN (0) entries are ignored; UNKNOWN if nothing else. */
export function worstQuality(levels) {
  const known = levels.filter((lv) => lv !== 0);
  return known.length ? Math.max(...known) : 0;
}

function clean(x) {
  return typeof x !== "number" || Number.isNaN(x) || x < 0 ? 0 : x;
}

// Python's round(): half to even (so both suites agree on x.5).
function pyRound(x) {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * Packet loss over a sliding window of `span` s, cut short when the last `recent` s differ
 * from the older part by `z` standard errors (the Python LossWindow, media/quality.py).
 */
export class LossWindow {
  constructor(span = 6, recent = 2, z = 3, minPackets = 20) {
    this.span = span;
    this.recent = recent;
    this.z = z;
    this.minPackets = minPackets;
    this.samples = [];
  }

  /** An interval ending at `t` (s) with `expected` packets, `lost` of them lost. */
  add(t, expected, lost) {
    if (expected || lost) this.samples.push([t, expected, lost]);
  }

  clear() {
    this.samples = [];
  }

  /** Loss in percent over the window ending at `now`; null if it holds no packets. */
  lossPct(now) {
    this.samples = this.samples.filter(([t]) => t > now - this.span);
    const split = now - this.recent;
    let oldE = 0, oldL = 0, newE = 0, newL = 0;
    for (const [t, e, l] of this.samples) {
      if (t > split) { newE += e; newL += l; } else { oldE += e; oldL += l; }
    }
    if (oldE >= this.minPackets && newE >= this.minPackets && differs(oldL, oldE, newL, newE, this.z)) {
      this.samples = this.samples.filter(([t]) => t > split);
      oldE = oldL = 0;
    }
    const totalE = oldE + newE, totalL = oldL + newL;
    if (totalE <= 0) return null;
    return (100 * Math.min(Math.max(totalL, 0), totalE)) / totalE;
  }
}

function differs(l1, n1, l2, n2, z) {
  l1 = Math.min(Math.max(l1, 0), n1);
  l2 = Math.min(Math.max(l2, 0), n2);
  const p = (l1 + l2) / (n1 + n2);
  if (p <= 0 || p >= 1) return false;
  const se = Math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2));
  return Math.abs(l1 / n1 - l2 / n2) >= z * se;
}

// ----------------------------------------------------------------------------- audio metering

// An AudioWorklet that posts [sumOfSquares, sampleCount] (int16 units, all channels) about
// every 50 ms; loaded from a Blob so this SDK stays one file.
const METER_WORKLET = `
class CallkitMeter extends AudioWorkletProcessor {
  constructor() { super(); this.s = 0; this.n = 0; }
  process(inputs) {
    const input = inputs[0];
    if (input && input.length) {
      for (const ch of input) {
        for (let i = 0; i < ch.length; i++) { const x = ch[i] * 32768; this.s += x * x; }
        this.n += ch.length;
      }
    } else {
      this.n += 128;
    }
    if (this.n >= 2400) { this.port.postMessage([this.s, this.n]); this.s = 0; this.n = 0; }
    return true;
  }
}
registerProcessor("callkit-meter", CallkitMeter);
`;

class AudioMeters {
  constructor() {
    this.ctx = null;
    this.ready = null;
    this.meters = new Map(); // key -> {source, node, sum, count}
  }

  async context() {
    if (!this.ctx) {
      this.ctx = new AudioContext();
      const url = URL.createObjectURL(new Blob([METER_WORKLET], { type: "text/javascript" }));
      this.ready = this.ctx.audioWorklet.addModule(url);
      this.sink = this.ctx.createGain();
      this.sink.gain.value = 0;
      this.sink.connect(this.ctx.destination);
    }
    await this.ready;
    if (this.ctx.state === "suspended") this.ctx.resume().catch(() => {});
    return this.ctx;
  }

  /** Meter `stream`'s audio under `key` (replacing an earlier meter of that key). */
  async attach(key, stream) {
    const ctx = await this.context();
    this.detach(key);
    const source = ctx.createMediaStreamSource(stream);
    const node = new AudioWorkletNode(ctx, "callkit-meter", { numberOfOutputs: 1 });
    const meter = { source, node, sum: 0, count: 0 };
    node.port.onmessage = (ev) => {
      meter.sum += ev.data[0];
      meter.count += ev.data[1];
    };
    source.connect(node);
    node.connect(this.sink);
    this.meters.set(key, meter);
  }

  detach(key) {
    const m = this.meters.get(key);
    if (!m) return;
    m.source.disconnect();
    m.node.disconnect();
    m.node.port.onmessage = null;
    this.meters.delete(key);
  }

  /** Volume 0..100 of everything metered under `key` since the last take (0 if none). */
  takeVolume(key, muted = false) {
    const m = this.meters.get(key);
    if (!m) return 0;
    const level = dbfsFromSums(muted ? 0 : m.sum, m.count);
    m.sum = 0;
    m.count = 0;
    return volumeFromDbfs(level);
  }

  close() {
    for (const key of [...this.meters.keys()]) this.detach(key);
    if (this.ctx) this.ctx.close().catch(() => {});
    this.ctx = null;
  }
}

// ----------------------------------------------------------------------------- signaling link

class SignalingLink {
  constructor(url, onPush, onLost, onResumed) {
    this.url = url;
    this.onPush = onPush;
    this.onLost = onLost;
    this.onResumed = onResumed;
    this.nextId = 1;
    this.pending = new Map();
    this.ws = null;
    this.up = false;
    this.closing = false;
    this.final = false;
    this.sessionId = null;
    this.resumeGrace = 9;
    this.lastHeard = 0;
    this.waiters = [];
    this.reconnects = 0;
  }

  async connect(login) {
    this.login = login;
    const data = await this.open();
    this.heartbeat = setInterval(() => this.beat(), HEARTBEAT);
    return data;
  }

  // Open a socket and log in on it; resolves with the login reply's data.
  open() {
    return new Promise((resolve, reject) => {
      let ws;
      try {
        ws = new WebSocket(this.url);
      } catch (e) {
        reject(new CallError(ErrorCode.INIT_FAIL, `cannot reach signaling at ${this.url}: ${e}`));
        return;
      }
      const id = this.nextId++;
      let settled = false;
      const fail = (err) => {
        if (!settled) { settled = true; clearTimeout(timer); reject(err); }
      };
      const timer = setTimeout(() => {
        fail(new CallError(ErrorCode.SIGNALING_SEND_FAIL, "no reply to login within 10 s"));
        ws.close();
      }, REQUEST_TIMEOUT);
      ws.onopen = () => {
        const msg = { v: 1, type: "login", id, ...this.login };
        if (this.sessionId) msg.resume = this.sessionId;
        ws.send(JSON.stringify(msg));
      };
      ws.onerror = () => {
        const err = new CallError(ErrorCode.INIT_FAIL, `cannot reach signaling at ${this.url}`);
        err.unreachable = true; // worth retrying, unlike a refused login
        fail(err);
      };
      ws.onclose = (ev) => {
        if (!settled) {
          fail(new CallError(ErrorCode.SIGNALING_SEND_FAIL, `connection closed during login (${ev.code})`));
        } else if (this.ws === ws) {
          this.dropped(ev.code);
        }
      };
      ws.onmessage = (ev) => {
        this.lastHeard = performance.now();
        let msg;
        try { msg = JSON.parse(ev.data); } catch { return; }
        if (!settled && (msg.type === "ok" || msg.type === "error") && msg.id === id) {
          settled = true;
          clearTimeout(timer);
          if (msg.type === "error") {
            ws.close();
            reject(new CallError(msg.code, msg.message));
            return;
          }
          this.sessionId = msg.data.sessionId || null;
          if (typeof msg.data.resumeGrace === "number") this.resumeGrace = msg.data.resumeGrace;
          if (Array.isArray(msg.data.iceServers)) this.onIceServers?.(msg.data.iceServers);
          this.ws = ws;
          this.setUp(true);
          resolve(msg.data);
          return;
        }
        this.handle(msg);
      };
    });
  }

  setUp(up) {
    this.up = up;
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }

  waitUp(deadline) {
    return new Promise((resolve, reject) => {
      const check = () => {
        if (this.up) return resolve();
        const left = deadline - performance.now();
        if (this.closing || this.final || left <= 0) {
          return reject(new CallError(ErrorCode.SIGNALING_SEND_FAIL, "not connected to signaling"));
        }
        const t = setTimeout(check, left);
        this.waiters.push(() => { clearTimeout(t); check(); });
      };
      check();
    });
  }

  /** Send a request; resolves with the reply's data, rejects with CallError. */
  async request(type, fields = {}, onReply = null) {
    const deadline = performance.now() + REQUEST_TIMEOUT;
    if (!this.up) await this.waitUp(deadline);
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new CallError(ErrorCode.SIGNALING_SEND_FAIL, `no reply to ${type} within 10 s`));
      }, Math.max(100, deadline - performance.now()));
      this.pending.set(id, { resolve, reject, timer, onReply });
      try {
        this.ws.send(JSON.stringify({ v: 1, type, id, ...fields }));
      } catch (e) {
        clearTimeout(timer);
        this.pending.delete(id);
        reject(new CallError(ErrorCode.SIGNALING_SEND_FAIL, `send failed: ${e}`));
      }
    });
  }

  handle(msg) {
    if (msg.type === "ok" || msg.type === "error") {
      const entry = this.pending.get(msg.id);
      if (!entry) return;
      this.pending.delete(msg.id);
      clearTimeout(entry.timer);
      if (msg.type === "error") {
        entry.reject(new CallError(msg.code, msg.message));
      } else {
        if (entry.onReply) {
          try { entry.onReply(msg.data); } catch (e) { console.error("reply hook failed", e); }
        }
        entry.resolve(msg.data);
      }
      return;
    }
    if (msg.type === "kicked" || msg.type === "sigExpired") this.final = true;
    try { this.onPush(msg); } catch (e) { console.error(`handling ${msg.type} failed`, e); }
  }

  // The browser answers the service's pings itself; our own `ping` requests tell us that
  // the service is still there (a silent link for 1.5 heartbeats counts as dropped).
  beat() {
    const now = performance.now();
    const late = now - (this.lastBeat || now) > HEARTBEAT * 2; // a throttled background tab
    this.lastBeat = now;
    if (!this.up || !this.ws) return;
    if (!late && now - this.lastHeard > HEARTBEAT * 1.5 + 500) {
      const ws = this.ws;
      this.ws = null;
      ws.onclose = null;
      try { ws.close(); } catch {}
      this.dropped(1006, false);
      return;
    }
    this.request("ping").catch(() => {});
  }

  failPending(reason) {
    for (const [id, entry] of this.pending) {
      clearTimeout(entry.timer);
      entry.reject(new CallError(ErrorCode.SIGNALING_SEND_FAIL, reason));
      this.pending.delete(id);
    }
  }

  // The socket ended. 1008 (kicked, expired, policy) and 4001 (resumed elsewhere) are final;
  // anything else reconnects with backoff and resumes, like the Python engine.
  dropped(code, touch = true) {
    this.setUp(false);
    this.failPending(`signaling lost: closed (${code})`);
    if (this.closing) return;
    if (touch) this.lastHeard = performance.now();
    if (this.final || code === 1008 || code === 4001) {
      this.gone(`closed (${code})`);
      return;
    }
    this.reconnect(code);
  }

  async reconnect(code) {
    const deadline = this.lastHeard + Math.max(1, this.resumeGrace - 0.5) * 1000;
    let delay = 100;
    let attempts = 0;
    let last = "no attempt";
    while (!this.closing) {
      const left = deadline - performance.now();
      if (left <= 0) break;
      await sleep(Math.min(left, delay * (1 + 0.25 * Math.random())));
      delay = Math.min(delay * 2, 1000);
      attempts += 1;
      if (this.closing || deadline - performance.now() <= 0) break;
      try {
        const data = await this.open();
        this.reconnects += 1;
        try { this.onResumed(data); } catch (e) { console.error("resume hook failed", e); }
        return;
      } catch (e) {
        last = e.msg || String(e);
        if (!e.unreachable && e.code !== ErrorCode.SIGNALING_SEND_FAIL) {
          this.gone(`login refused on reconnect: ${last} (code ${e.code})`);
          return;
        }
      }
    }
    if (!this.closing) {
      this.gone(`closed (${code}); could not reconnect within ${this.resumeGrace} s (${attempts} attempts; last: ${last})`);
    }
  }

  gone(reason) {
    clearInterval(this.heartbeat);
    this.closing = true;
    this.onLost(reason);
  }

  close() {
    this.closing = true;
    clearInterval(this.heartbeat);
    this.setUp(false);
    this.failPending("signaling closed");
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.onclose = null;
      try { ws.close(1000); } catch {}
    }
  }
}

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

// ----------------------------------------------------------------------------- one peer

// Media to and from one remote user (full mesh). Every connection has exactly one audio and
// one video transceiver, in that m-line order; the video transceiver is sendrecv while we
// send video, else recvonly. The later joiner of a pair is the offerer and the only side that
// ever creates offers; the answerer asks for one with a `renegotiate` relay. One negotiation
// at a time: a re-offer waits for the pending answer.
class Peer {
  constructor(engine, user, offerer) {
    this.engine = engine;
    this.user = user;
    this.offerer = offerer;
    this.pc = new RTCPeerConnection({ iceServers: engine.iceServers() });
    this.awaitingAnswer = false;
    this.again = false;
    this.closed = false;
    this.connected = false;
    this.sentDescription = false;
    this.trickled = 0;
    this.queue = Promise.resolve();
    this.remoteStream = new MediaStream();
    this.audioEl = null;
    this.stats = { at: 0, received: null, lost: null, lastPacketAt: 0 };
    this.loss = new LossWindow();
    this.upLoss = new LossWindow();
    this.quality = 0;
    this.uplink = 0;
    this.framesDecoded = 0;
    this.pc.ontrack = (ev) => this.onTrack(ev);
    this.pc.onicecandidate = (ev) => this.onCandidate(ev);
    this.pc.onconnectionstatechange = () => this.onState();
    this.watchdog = setTimeout(() => {
      if (!this.connected) this.fail(`media to ${user} did not connect within 10 s`);
    }, CONNECT_TIMEOUT);
  }

  // serialise every negotiation step of this connection
  run(fn) {
    const next = this.queue.then(fn, fn);
    this.queue = next.catch((e) => {
      if (!this.closed) this.engine.emitError(ErrorCode.MEDIA_FAILED, `negotiation with ${this.user} failed: ${e}`);
    });
    return this.queue;
  }

  transceivers() {
    let audio = null, video = null;
    for (const t of this.pc.getTransceivers()) {
      const kind = t.receiver.track.kind;
      if (kind === "audio" && !audio) audio = t;
      else if (kind === "video" && !video) video = t;
    }
    return { audio, video };
  }

  // put our tracks and directions on the transceivers (creating them as offerer)
  attachTracks() {
    const e = this.engine;
    const sendVideo = e.sendingVideo();
    let { audio, video } = this.transceivers();
    if (!audio) audio = this.pc.addTransceiver("audio", { direction: "sendrecv" });
    if (!video) video = this.pc.addTransceiver("video", { direction: sendVideo ? "sendrecv" : "recvonly" });
    audio.direction = "sendrecv";
    const audioTrack = e.localAudioTrack();
    if (audio.sender.track !== audioTrack) audio.sender.replaceTrack(audioTrack);
    video.direction = sendVideo ? "sendrecv" : "recvonly";
    const videoTrack = sendVideo && e.cameraOpen ? e.localVideoTrack() : null;
    if (video.sender.track !== videoTrack) video.sender.replaceTrack(videoTrack);
  }

  /** Apply the current camera state to the video sender (no renegotiation). */
  refreshVideoTrack() {
    const { video } = this.transceivers();
    if (!video) return;
    const e = this.engine;
    const track = e.sendingVideo() && e.cameraOpen ? e.localVideoTrack() : null;
    if (video.sender.track !== track) video.sender.replaceTrack(track).catch(() => {});
  }

  /** Offerer: send a (new) offer. Answerer: ask the offerer for one. */
  renegotiate() {
    if (this.closed) return Promise.resolve();
    if (!this.offerer) return this.engine.relay(this.user, "renegotiate", {});
    return this.run(async () => {
      if (this.closed) return;
      if (this.awaitingAnswer) { this.again = true; return; }
      this.attachTracks();
      const offer = await this.pc.createOffer();
      await this.pc.setLocalDescription(offer);
      this.awaitingAnswer = true;
      await this.sendDescription();
    });
  }

  // Send our SDP once ICE gathering completed (or after GATHER_WAIT), so the SDP carries the
  // candidates; later candidates go out as `candidate` relays.
  async sendDescription() {
    await this.gathered();
    const d = this.pc.localDescription;
    this.sentDescription = true;
    await this.engine.relay(this.user, d.type, { sdp: d.sdp, type: d.type });
  }

  gathered() {
    if (this.pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(t);
        this.pc.removeEventListener("icegatheringstatechange", check);
        resolve();
      };
      const check = () => { if (this.pc.iceGatheringState === "complete") done(); };
      const t = setTimeout(done, GATHER_WAIT);
      this.pc.addEventListener("icegatheringstatechange", check);
    });
  }

  // A candidate gathered after our SDP went out is trickled as a `candidate` relay, and then
  // the end of candidates as {candidate: ""}. When every candidate was in the SDP nothing is
  // sent: an end marker would stop the peer from waiting for peer-reflexive candidates, which
  // is all it has when our host candidates are mDNS names it cannot resolve.
  onCandidate(ev) {
    if (!this.sentDescription || this.closed) return; // still in the SDP we have not sent
    const c = ev.candidate;
    if (c && !c.candidate) return;
    if (!c && !this.trickled) return;
    const data = c
      ? { candidate: c.candidate, sdpMid: c.sdpMid, sdpMLineIndex: c.sdpMLineIndex }
      : { candidate: "" };
    if (c) this.trickled += 1;
    this.engine.relay(this.user, "candidate", data);
  }

  /** Apply an offer / answer / renegotiate / candidate relay from the remote user. */
  handle(kind, data) {
    return this.run(async () => {
      if (this.closed) return;
      if (kind === "offer" && !this.offerer) {
        await this.pc.setRemoteDescription({ type: "offer", sdp: data.sdp });
        this.attachTracks();
        const answer = await this.pc.createAnswer();
        await this.pc.setLocalDescription(answer);
        await this.sendDescription();
      } else if (kind === "answer" && this.offerer && this.awaitingAnswer) {
        await this.pc.setRemoteDescription({ type: "answer", sdp: data.sdp });
        this.awaitingAnswer = false;
        if (this.again) {
          this.again = false;
          setTimeout(() => this.renegotiate(), 0);
        }
      } else if (kind === "renegotiate" && this.offerer) {
        setTimeout(() => this.renegotiate(), 0);
      } else if (kind === "candidate") {
        if (!this.pc.remoteDescription) return;
        const c = data && typeof data.candidate === "string" ? data : { candidate: "" };
        try {
          await this.pc.addIceCandidate(c.candidate ? c : null);
        } catch (e) {
          console.debug("callkit: ignoring candidate", e);
        }
      }
    });
  }

  onTrack(ev) {
    const track = ev.track;
    for (const old of this.remoteStream.getTracks()) {
      if (old.kind === track.kind && old !== track) this.remoteStream.removeTrack(old);
    }
    if (!this.remoteStream.getTracks().includes(track)) this.remoteStream.addTrack(track);
    if (track.kind === "audio") {
      // Chromium gives WebAudio no samples of a remote WebRTC stream unless a media element
      // plays it; the element is also how the user hears the call.
      if (!this.audioEl) {
        this.audioEl = document.createElement("audio");
        this.audioEl.autoplay = true;
        this.audioEl.dataset.callkitUser = this.user;
      }
      const audioStream = new MediaStream([track]);
      this.audioEl.srcObject = audioStream;
      this.audioEl.play().catch(() => {});
      this.engine.meters.attach(`remote:${this.user}`, audioStream).catch((e) => console.warn(e));
    }
    this.engine.emitStream(this.user, this.remoteStream);
  }

  onState() {
    const state = this.pc.connectionState;
    if (state === "connected") {
      if (!this.connected) {
        this.connected = true;
        this.engine.peerConnected(this);
      }
    } else if (state === "failed") {
      this.fail(`media connection to ${this.user} failed`);
    }
  }

  fail(reason) {
    if (this.failed || this.closed) return;
    this.failed = true;
    this.engine.peerFailed(this, reason);
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.watchdog);
    this.engine.meters.detach(`remote:${this.user}`);
    if (this.audioEl) {
      this.audioEl.srcObject = null;
      this.audioEl = null;
    }
    try { this.pc.close(); } catch {}
  }
}

// ----------------------------------------------------------------------------- the engine

/**
 * A TUICallKit-style call engine for one user, in the browser.
 *
 * Options (all optional): iceServers (RTCIceServer[]), audioConstraints / videoConstraints
 * (getUserMedia constraints; echo cancellation, noise suppression and auto gain default to
 * off so levels are stable), volumeInterval (ms, >= 100, default 300), qualityInterval (ms,
 * default 2000).
 */
export class CallEngine {
  /** A new engine for the service at `url` (ws:// or wss://; default: this page's /ws). */
  static create(url, options = {}) {
    return new CallEngine(url, options);
  }

  constructor(url, options = {}) {
    if (!url) {
      const proto = location.protocol === "https:" ? "wss:" : "ws:";
      url = `${proto}//${location.host}/ws`;
    }
    const volumeInterval = options.volumeInterval ?? 300;
    if (volumeInterval < 100) throw new CallError(ErrorCode.PARAM_INVALID, "volumeInterval must be >= 100 ms");
    this.url = url;
    this.options = { ...options, volumeInterval, qualityInterval: options.qualityInterval ?? 2000 };
    this.userId = null;
    this.sdkAppId = null;
    this.listeners = new Map(EVENT_NAMES.map((n) => [n, []]));
    this.streamListeners = [];
    this.link = null;
    this.callCtx = null;
    this.peers = new Map();
    this.busy = new Set();
    this.meters = new AudioMeters();
    this.localStream = new MediaStream();
    this.micOpen = true;
    this.cameraOpen = true;
    this.videoAvailable = new Map();
    this.multiDevice = false;
    this.timers = [];
  }

  // --------------------------------------------------------------- listeners

  /** Call `fn(res)` on `event` (one of the 17 event names). */
  on(event, fn) {
    const list = this.listeners.get(event);
    if (!list) throw new CallError(ErrorCode.PARAM_INVALID, `unknown event ${event}`);
    if (typeof fn !== "function") throw new CallError(ErrorCode.PARAM_INVALID, "listener must be a function");
    if (!list.includes(fn)) list.push(fn);
  }

  /** Stop calling `fn` on `event`. */
  off(event, fn) {
    const list = this.listeners.get(event);
    if (!list) throw new CallError(ErrorCode.PARAM_INVALID, `unknown event ${event}`);
    const i = list.indexOf(fn);
    if (i >= 0) list.splice(i, 1);
  }

  emit(event, payload) {
    for (const fn of [...this.listeners.get(event)]) {
      try {
        const r = fn({ ...payload });
        if (r && typeof r.catch === "function") r.catch((e) => console.error(`listener for ${event} failed`, e));
      } catch (e) {
        console.error(`listener for ${event} failed`, e);
      }
    }
  }

  emitError(code, msg) {
    this.emit("onError", { code, msg });
  }

  /** Not a TUICallKit event: `fn(userId, MediaStream)` whenever a remote stream (or the
   * local one, under your own user id) gains a track; for showing video. */
  onStream(fn) {
    this.streamListeners.push(fn);
  }

  emitStream(user, stream) {
    for (const fn of this.streamListeners) {
      try { fn(user, stream); } catch (e) { console.error("stream listener failed", e); }
    }
  }

  /** The remote MediaStream of `userId` (undefined before media arrives). */
  getRemoteStream(userId) {
    return this.peers.get(userId)?.remoteStream;
  }

  // --------------------------------------------------------------- state

  get callState() {
    return this.callCtx ? this.callCtx.state : "idle";
  }

  get callId() {
    return this.callCtx ? this.callCtx.callId : null;
  }

  get roomId() {
    return this.callCtx ? this.callCtx.roomId : null;
  }

  // --------------------------------------------------------------- login

  /** Log in; rejects with CallError(-1201) on failure. */
  async init(sdkAppId, userId, userSig) {
    if (!Number.isInteger(sdkAppId) || typeof userId !== "string" || typeof userSig !== "string") {
      throw new CallError(ErrorCode.PARAM_INVALID, "init needs sdkAppId: int, userId: string, userSig: string");
    }
    if (!USER_ID_RE.test(userId)) {
      throw new CallError(ErrorCode.INIT_FAIL, `invalid user id ${JSON.stringify(userId.slice(0, 40))}: letters, digits, '-' and '_', 1 to 32 characters`);
    }
    if (this.link) await this.logout();
    const link = new SignalingLink(
      this.url,
      (msg) => this.onPush(msg),
      (reason) => this.onLinkLost(link, reason),
      (data) => this.onLinkResumed(data),
    );
    try {
      const data = await link.connect({ sdkAppId, userId, userSig, multiDevice: this.multiDevice });
      this.serverIceServers = Array.isArray(data.iceServers) ? data.iceServers : [];
    } catch (e) {
      throw new CallError(ErrorCode.INIT_FAIL, e.msg || String(e));
    }
    this.link = link;
    this.userId = userId;
    this.sdkAppId = sdkAppId;
  }

  /** ICE servers for new connections: the `iceServers` option, else the login reply's. */
  iceServers() {
    return this.options.iceServers || this.serverIceServers || [];
  }

  requireInit() {
    if (!this.link || !this.userId) throw new CallError(ErrorCode.INIT_FAIL, "call init() first");
    return this.link;
  }

  /** Let every online device of this user ring (applies from the next init). */
  async enableMultiDeviceAbility(enable) {
    if (typeof enable !== "boolean") throw new CallError(ErrorCode.PARAM_INVALID, "enable must be a boolean");
    this.multiDevice = enable;
  }

  /** Store this user's nickname and avatar on the service. */
  async setSelfInfo(nickname, avatarUrl) {
    const link = this.requireInit();
    if (typeof nickname !== "string" || typeof avatarUrl !== "string") {
      throw new CallError(ErrorCode.PARAM_INVALID, "nickname and avatarUrl must be strings");
    }
    await link.request("selfInfo", { nickname, avatarUrl });
  }

  // --------------------------------------------------------------- calls

  /** Place a 1v1 call. params: {timeout (s, default 30), userData (string)}. */
  async call(userId, mediaType, params = {}) {
    if (typeof userId !== "string" || !userId) throw new CallError(ErrorCode.PARAM_INVALID, "userId must be a non-empty string");
    await this.start([userId], "", mediaType, params);
  }

  /** Place a group call to up to 8 users. */
  async groupCall(userIdList, groupId, mediaType, params = {}) {
    if (typeof groupId !== "string") throw new CallError(ErrorCode.PARAM_INVALID, "groupId must be a string");
    await this.start(userIdList, groupId, mediaType, params);
  }

  checkIds(ids) {
    if (!Array.isArray(ids) || !ids.length) throw new CallError(ErrorCode.PARAM_INVALID, "user id list must be a non-empty array");
    if (ids.some((u) => typeof u !== "string" || !u)) throw new CallError(ErrorCode.PARAM_INVALID, "user ids must be non-empty strings");
    if (ids.includes(this.userId)) throw new CallError(ErrorCode.PARAM_INVALID, "cannot call yourself");
    if (new Set(ids).size !== ids.length) throw new CallError(ErrorCode.PARAM_INVALID, "duplicate user ids");
    if (ids.length > MAX_CALLEES) throw new CallError(ErrorCode.PARAM_INVALID, `at most ${MAX_CALLEES} callees`);
    return [...ids];
  }

  static media(mediaType) {
    if (mediaType !== 1 && mediaType !== 2) {
      throw new CallError(ErrorCode.PARAM_INVALID, `media type must be AUDIO (1) or VIDEO (2), got ${mediaType}`);
    }
    return mediaType;
  }

  static params(params) {
    const timeout = params?.timeout ?? 30;
    const userData = params?.userData ?? "";
    if (typeof timeout !== "number" || !(timeout > 0) || typeof userData !== "string") {
      throw new CallError(ErrorCode.PARAM_INVALID, "params: {timeout: seconds > 0, userData: string}");
    }
    return { timeout, userData };
  }

  async start(ids, groupId, mediaType, params) {
    const link = this.requireInit();
    const callees = this.checkIds(ids);
    const media = CallEngine.media(mediaType);
    const { timeout, userData } = CallEngine.params(params);
    if (this.callCtx) throw new CallError(ErrorCode.REQUEST_REFUSED, `already ${this.callCtx.state}`);
    await this.once("call", () =>
      link.request("call", { callees, mediaType: media, groupId, timeout, userData }, (data) => {
        const snap = data.call;
        this.callCtx = this.newContext(snap.callId, snap.roomID, snap.groupId, media, CallRole.CALLER, "calling");
        this.updateContext(snap);
      }),
    );
  }

  async once(name, fn) {
    if (this.busy.has(name)) throw new CallError(ErrorCode.REQUEST_REPEATED, `${name} is already in progress`);
    this.busy.add(name);
    try {
      return await fn();
    } finally {
      this.busy.delete(name);
    }
  }

  requireCall(...states) {
    const link = this.requireInit();
    const ctx = this.callCtx;
    if (!ctx || (states.length && !states.includes(ctx.state))) {
      throw new CallError(ErrorCode.REQUEST_REFUSED, `not allowed while ${ctx ? ctx.state : "idle"}`);
    }
    return [link, ctx];
  }

  /** Accept the ringing incoming call. */
  async accept() {
    if (this.busy.has("accept")) throw new CallError(ErrorCode.REQUEST_REPEATED, "accept is already in progress");
    const [link, ctx] = this.requireCall("ringing", "connected");
    if (ctx.state === "connected") throw new CallError(ErrorCode.REQUEST_REPEATED, "the call is already accepted");
    await this.once("accept", () => link.request("accept", { callId: ctx.callId }));
  }

  /** Reject the ringing incoming call. */
  async reject() {
    const [link, ctx] = this.requireCall("ringing");
    await this.once("reject", () => link.request("reject", { callId: ctx.callId }));
  }

  /** Stop ringing without rejecting (the caller sees line busy). */
  async ignore() {
    const [link, ctx] = this.requireCall("ringing");
    await this.once("ignore", () => link.request("ignore", { callId: ctx.callId }));
  }

  /** Cancel an outgoing call, reject a ringing one, or leave a connected one. */
  async hangup() {
    const [link, ctx] = this.requireCall();
    await this.once("hangup", () => link.request("hangup", { callId: ctx.callId }));
  }

  /** Invite more users into the current call. params: {timeout}. */
  async inviteUser(userIdList, params = {}) {
    const [link, ctx] = this.requireCall("calling", "connected");
    const callees = this.checkIds(userIdList);
    const { timeout } = CallEngine.params(params);
    await link.request("invite", { callId: ctx.callId, callees, timeout });
  }

  /** Join a running group call by its room id. */
  async joinInGroupCall(roomId, groupId, mediaType) {
    const link = this.requireInit();
    if (!Number.isInteger(roomId) || roomId <= 0) throw new CallError(ErrorCode.PARAM_INVALID, `roomId must be a positive integer, got ${roomId}`);
    const media = CallEngine.media(mediaType);
    if (this.callCtx) throw new CallError(ErrorCode.REQUEST_REFUSED, `already ${this.callCtx.state}`);
    await this.once("join", () =>
      link.request("join", { roomId, groupId, mediaType: media }, (data) => {
        if (!this.callCtx) {
          const snap = data.call;
          this.callCtx = this.newContext(snap.callId, snap.roomID, snap.groupId, media, CallRole.CALLED, "connected");
          this.updateContext(snap);
        }
      }),
    );
  }

  // --------------------------------------------------------------- media control

  /** Switch the connected call between VIDEO and AUDIO; every connection renegotiates. */
  async switchCallMediaType(mediaType) {
    const media = CallEngine.media(mediaType);
    const [link, ctx] = this.requireCall("connected");
    if (media === ctx.mediaType) throw new CallError(ErrorCode.REQUEST_REPEATED, `the call is already ${media === 2 ? "VIDEO" : "AUDIO"}`);
    await this.once("switch", () => link.request("switchMedia", { callId: ctx.callId, mediaType: media }));
  }

  /** Send audio again; the others get onUserAudioAvailable(true). */
  async openMicrophone() { await this.setDevice({ audio: true }); }

  /** Send silence; the others get onUserAudioAvailable(false) and read volume 0. */
  async closeMicrophone() { await this.setDevice({ audio: false }); }

  /** Send video again (video calls only, else -1205). */
  async openCamera() { await this.setDevice({ video: true }); }

  /** Stop sending video; the others get onUserVideoAvailable(false). */
  async closeCamera() { await this.setDevice({ video: false }); }

  async setDevice(fields) {
    const [link, ctx] = this.requireCall("calling", "connected");
    if (fields.video !== undefined && ctx.mediaType !== CallMediaType.VIDEO) {
      throw new CallError(ErrorCode.SCENE_NOT_SUPPORTED, "no camera in an audio call");
    }
    await link.request("device", { callId: ctx.callId, ...fields });
    if (fields.audio !== undefined) {
      this.micOpen = fields.audio;
      for (const t of this.localStream.getAudioTracks()) t.enabled = this.micOpen;
    }
    if (fields.video !== undefined) {
      this.cameraOpen = fields.video;
      if (this.cameraOpen) await this.ensureLocalMedia(true);
      for (const peer of this.peers.values()) peer.refreshVideoTrack();
    }
  }

  /** The local MediaStream (microphone, and camera in video calls). */
  getLocalStream() {
    return this.localStream;
  }

  localAudioTrack() {
    return this.localStream.getAudioTracks()[0] || null;
  }

  localVideoTrack() {
    return this.localStream.getVideoTracks()[0] || null;
  }

  sendingVideo() {
    return !!this.callCtx && this.callCtx.mediaType === CallMediaType.VIDEO && !!this.localVideoTrack();
  }

  // Open the microphone (and the camera when `video`) once; a missing device is onError -1101
  // and the call goes on without it.
  async ensureLocalMedia(video) {
    const wantAudio = !this.localAudioTrack();
    const wantVideo = video && !this.localVideoTrack();
    if (!wantAudio && !wantVideo) return;
    const audio = { echoCancellation: false, noiseSuppression: false, autoGainControl: false, ...(this.options.audioConstraints || {}) };
    const constraints = { audio: wantAudio ? audio : false, video: wantVideo ? (this.options.videoConstraints || { width: 320, height: 240 }) : false };
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia(constraints);
    } catch (e) {
      this.emitError(ErrorCode.PERMISSION_DENIED, `cannot open ${wantVideo ? "camera/" : ""}microphone: ${e.name || e}`);
      return;
    }
    for (const t of stream.getTracks()) {
      if (t.kind === "audio") t.enabled = this.micOpen;
      this.localStream.addTrack(t);
    }
    if (wantAudio && this.localAudioTrack()) {
      await this.meters.attach("local", new MediaStream([this.localAudioTrack()]));
    }
    this.emitStream(this.userId, this.localStream);
  }

  stopLocalMedia() {
    for (const t of this.localStream.getTracks()) {
      t.stop();
      this.localStream.removeTrack(t);
    }
    this.meters.detach("local");
  }

  // --------------------------------------------------------------- server pushes

  newContext(callId, roomId, groupId, mediaType, role, state) {
    return { callId, roomId, groupId, mediaType, role, state, members: new Map(), beganAt: 0 };
  }

  updateContext(snap) {
    const ctx = this.callCtx;
    if (!snap || !ctx) return;
    if (snap.roomID !== undefined) ctx.roomId = snap.roomID;
    if (snap.callMediaType !== undefined) ctx.mediaType = snap.callMediaType;
    ctx.members = new Map((snap.members || []).map((m) => [m.userId, m]));
  }

  joined() {
    if (!this.callCtx) return [];
    return [...this.callCtx.members.values()].filter((m) => m.state === "joined").map((m) => m.userId);
  }

  /** Members of the current call as the service last described them (for UIs). */
  members() {
    return this.callCtx ? [...this.callCtx.members.values()].map((m) => ({ ...m })) : [];
  }

  onPush(msg) {
    if (msg.type === "event") this.onEvent(msg);
    else if (msg.type === "relayed") this.onRelayed(msg);
    else if (msg.type === "kicked") {
      this.endLocally();
      this.dropLink();
      this.emit("onKickedOffline", {});
    } else if (msg.type === "sigExpired") {
      this.endLocally();
      this.dropLink();
      this.emit("onUserSigExpired", {});
    }
  }

  onEvent(ev) {
    const name = ev.event;
    const payload = ev.payload || {};
    let ctx = this.callCtx;
    if (!this.listeners.has(name)) return;
    if (name === "onCallReceived") {
      if (ctx && ctx.callId !== ev.callId) return; // a second incoming call while busy
      ctx = this.callCtx = this.newContext(ev.callId, 0, payload.groupId, payload.callMediaType, CallRole.CALLED, "ringing");
    } else if (!ctx || ctx.callId !== ev.callId) {
      if (name === "onCallBegin" && ev.call) { // joinInGroupCall before its reply
        ctx = this.callCtx = this.newContext(ev.callId, payload.roomID, ev.call.groupId || "", payload.callMediaType, payload.callRole, "ringing");
      } else {
        return;
      }
    }
    this.updateContext(ev.call);
    if (name === "onCallBegin") {
      ctx.state = "connected";
      ctx.role = payload.callRole;
      this.beginMedia(ctx);
    } else if (name === "onUserLeave") {
      this.closePeer(payload.userId);
    } else if (name === "onCallMediaTypeChanged") {
      ctx.mediaType = payload.newCallMediaType;
      this.applyMediaType(ctx);
    } else if (name === "onUserVideoAvailable") {
      if (this.videoAvailable.get(payload.userId) === payload.isVideoAvailable) return;
      this.videoAvailable.set(payload.userId, payload.isVideoAvailable);
    }
    this.emit(name, payload);
    if ((name === "onCallEnd" || name === "onCallCancelled") && this.callCtx === ctx) this.endLocally();
  }

  onRelayed(msg) {
    const ctx = this.callCtx;
    if (!ctx || ctx.callId !== msg.callId || ctx.state !== "connected") return;
    let peer = this.peers.get(msg.fromUser);
    if (msg.kind === "offer" && (!peer || !peer.offerer)) {
      if (!peer) peer = this.newPeer(ctx, msg.fromUser, false);
      peer.handle("offer", msg.data);
    } else if (peer && ["answer", "renegotiate", "candidate"].includes(msg.kind)) {
      peer.handle(msg.kind, msg.data);
    }
  }

  async relay(to, kind, data) {
    const ctx = this.callCtx;
    if (!this.link || !ctx) return;
    try {
      await this.link.request("relay", { callId: ctx.callId, to, kind, data });
    } catch (e) {
      console.info(`callkit: relay of ${kind} to ${to} failed: ${e.message}`);
    }
  }

  // --------------------------------------------------------------- media

  beginMedia(ctx) {
    ctx.beganAt = performance.now();
    ctx.mediaReady = this.ensureLocalMedia(ctx.mediaType === CallMediaType.VIDEO);
    const volumeTimer = setInterval(() => this.volumeTick(ctx), this.options.volumeInterval);
    const qualityTimer = setInterval(() => this.qualityTick(ctx), this.options.qualityInterval);
    const sampleTimer = setInterval(() => this.sampleStats(ctx), 500);
    this.timers.push(volumeTimer, qualityTimer, sampleTimer);
    if (ctx.role === CallRole.CALLED) { // the later joiner offers to everyone already in
      ctx.mediaReady.then(() => {
        if (this.callCtx !== ctx) return;
        for (const user of this.joined()) {
          if (user !== this.userId && !this.peers.has(user)) this.newPeer(ctx, user, true).renegotiate();
        }
      });
    }
  }

  newPeer(ctx, user, offerer) {
    const old = this.peers.get(user);
    if (old) old.close();
    const peer = new Peer(this, user, offerer);
    this.peers.set(user, peer);
    if (!offerer) {
      // apply the offer once the local media is open (so the answer carries our tracks)
      const run = peer.run.bind(peer);
      run(() => ctx.mediaReady);
    }
    return peer;
  }

  closePeer(user) {
    const peer = this.peers.get(user);
    if (peer) {
      peer.close();
      this.peers.delete(user);
    }
  }

  applyMediaType(ctx) {
    const video = ctx.mediaType === CallMediaType.VIDEO;
    this.videoAvailable.clear();
    const ready = video ? (this.cameraOpen = true, this.ensureLocalMedia(true)) : Promise.resolve();
    ready.then(() => {
      if (this.callCtx !== ctx) return;
      for (const peer of this.peers.values()) {
        if (!video) peer.refreshVideoTrack();
        if (peer.offerer) peer.renegotiate();
        else this.relay(peer.user, "renegotiate", {});
      }
    });
  }

  peerConnected(peer) {
    this.emitStream(peer.user, peer.remoteStream);
  }

  peerFailed(peer, reason) {
    if (this.peers.get(peer.user) !== peer) return;
    this.emitError(ErrorCode.MEDIA_FAILED, reason);
    if (this.callCtx && this.joined().length <= 2 && this.link) this.hangup().catch(() => {});
  }

  volumeTick(ctx) {
    if (this.callCtx !== ctx) return;
    const volumeMap = { [this.userId]: this.meters.takeVolume("local", !this.micOpen) };
    for (const user of this.joined()) {
      if (user !== this.userId) volumeMap[user] = this.meters.takeVolume(`remote:${user}`);
    }
    this.emit("onUserVoiceVolumeChanged", { volumeMap });
  }

  // Sample every peer's stats every 0.5 s: first decoded video frame (onUserVideoAvailable),
  // audio packet counters for the loss windows, jitter, RTT and the peer's reports about us.
  async sampleStats(ctx) {
    const now = performance.now() / 1000;
    for (const peer of [...this.peers.values()]) {
      if (peer.closed || !peer.connected || this.callCtx !== ctx) continue;
      let report;
      try { report = await peer.pc.getStats(); } catch { continue; }
      if (this.callCtx !== ctx || peer.closed) return;
      let frames = 0, audioIn = null, audioOut = null, remoteIn = null, rtt = null;
      report.forEach((s) => {
        if (s.type === "inbound-rtp" && s.kind === "video") frames += s.framesDecoded || 0;
        else if (s.type === "inbound-rtp" && s.kind === "audio") audioIn = s;
        else if (s.type === "remote-inbound-rtp" && s.kind === "audio") remoteIn = s;
        else if (s.type === "outbound-rtp" && s.kind === "audio") audioOut = s;
        else if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded" && typeof s.currentRoundTripTime === "number") rtt = s.currentRoundTripTime * 1000;
      });
      if (frames > peer.framesDecoded && ctx.mediaType === CallMediaType.VIDEO && !this.videoAvailable.has(peer.user)) {
        // the first decoded frame of a user: their video is available (TRTC semantics)
        this.videoAvailable.set(peer.user, true);
        this.emit("onUserVideoAvailable", { userId: peer.user, isVideoAvailable: true });
      }
      peer.framesDecoded = frames;
      if (remoteIn && typeof remoteIn.roundTripTime === "number" && rtt === null) rtt = remoteIn.roundTripTime * 1000;
      const st = peer.stats;
      if (audioIn) {
        const received = audioIn.packetsReceived || 0, lost = audioIn.packetsLost || 0;
        if (st.received !== null) {
          const dr = received - st.received, dl = lost - st.lost;
          peer.loss.add(now, dr + dl, dl);
          if (dr > 0) st.lastPacketAt = now;
        } else if (received > 0) {
          st.lastPacketAt = now;
        }
        st.received = received;
        st.lost = lost;
        st.jitter = (audioIn.jitter || 0) * 1000;
      }
      if (remoteIn) {
        // the peer's receiver reports about our audio: its cumulative loss, against the
        // packets we sent between two reports (the Python engine uses the reports' extended
        // highest sequence number; a browser's stats do not expose it)
        const sent = audioOut ? audioOut.packetsSent || 0 : null;
        const lost = remoteIn.packetsLost || 0;
        const report = remoteIn.reportsReceived ?? remoteIn.timestamp;
        if (report !== st.upReport) {
          if (st.upReport !== undefined && sent !== null && st.upSent !== null) {
            const dl = lost - st.upLost;
            peer.upLoss.add(now, Math.max(sent - st.upSent, dl, 0), dl);
          }
          st.upSent = sent;
          st.upLost = lost;
          st.upReport = report;
          st.upReportAt = now;
        }
        st.upJitter = (remoteIn.jitter || 0) * 1000;
      }
      st.rtt = rtt;
      st.at = now;
    }
    // report at once when someone goes DOWN or comes back (as the Python engine)
    let changed = false;
    for (const peer of this.peers.values()) {
      const down = peer.failed || (!!peer.stats.lastPacketAt && now - peer.stats.lastPacketAt >= 3);
      if (down !== !!peer.wasDown) {
        peer.wasDown = down;
        changed = true;
      }
    }
    if (changed && this.callCtx === ctx) this.qualityTick(ctx);
  }

  qualityTick(ctx) {
    if (this.callCtx !== ctx) return;
    const now = performance.now() / 1000;
    const remote = [];
    const uplinks = [];
    for (const user of this.joined()) {
      if (user === this.userId) continue;
      const peer = this.peers.get(user);
      let q = NetworkQuality.UNKNOWN;
      if (peer && (peer.failed || peer.pc.connectionState === "failed")) {
        q = NetworkQuality.DOWN;
      } else if (peer && peer.stats.lastPacketAt) {
        const st = peer.stats;
        if (now - st.lastPacketAt >= 3) {
          q = NetworkQuality.DOWN;
        } else {
          const loss = peer.loss.lossPct(now);
          q = qualityLevel(st.rtt, st.jitter, loss ?? 0);
        }
        if (st.upReportAt && now - st.upReportAt < 4) {
          const upLoss = peer.upLoss.lossPct(now);
          uplinks.push(qualityLevel(st.rtt, st.upJitter, upLoss ?? 0));
        }
      }
      remote.push({ userId: user, quality: q });
    }
    if (uplinks.length) ctx.localQuality = worstQuality(uplinks);
    const networkQualityList = [{ userId: this.userId, quality: ctx.localQuality || 0 }, ...remote];
    this.emit("onUserNetworkQualityChanged", { networkQualityList });
  }

  endLocally() {
    this.callCtx = null;
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
    this.videoAvailable.clear();
    this.micOpen = this.cameraOpen = true; // every call starts with both open
    for (const user of [...this.peers.keys()]) this.closePeer(user);
    this.stopLocalMedia();
  }

  // --------------------------------------------------------------- link loss / teardown

  onLinkLost(link, reason) {
    if (this.link !== link) return;
    const hadCall = !!this.callCtx;
    this.endLocally();
    this.link = null;
    this.emitError(ErrorCode.SIGNALING_SEND_FAIL, `signaling lost: ${reason}${hadCall ? "; the call ended" : ""}`);
  }

  onLinkResumed(data) {
    const ctx = this.callCtx;
    if (!ctx) return;
    const snap = data.call;
    if (snap && snap.callId === ctx.callId) {
      this.updateContext(snap);
      return;
    }
    this.endLocally();
    this.emitError(
      ErrorCode.SIGNALING_SEND_FAIL,
      data.resumed ? "the call ended while signaling was down" : "signaling was down longer than the service keeps a session; the call ended",
    );
  }

  dropLink() {
    const link = this.link;
    this.link = null;
    if (link) link.close();
  }

  async logout() {
    const link = this.link;
    this.link = null;
    if (!link) return;
    if (this.callCtx && link.up) {
      try { await link.request("hangup", { callId: this.callCtx.callId }); } catch {}
    }
    this.endLocally();
    link.close();
  }

  /** Hang up, close media and log out; idempotent. */
  async destroy() {
    await this.logout();
    this.endLocally();
    this.meters.close();
    this.meters = new AudioMeters();
    this.userId = null;
  }
}
