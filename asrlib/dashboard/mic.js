// Microphone capture for the Realtime tab: 16 kHz mono int16 chunks sent to the kernel.
//
// The AudioContext runs at 16 kHz where the browser allows it (Chrome does, and resamples the
// microphone with its own filter). Where it does not, the context keeps the device rate and the
// AudioWorklet resamples by averaging the input samples of each output sample's interval, a
// crude low-pass filter against aliasing. The worklet's output goes through a gain of 0 into
// the speakers: the graph must reach the destination to be processed, and the zero gain keeps
// the microphone from playing back and feeding itself.

const WORKLET = `
class Pcm16Downsampler extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = options.processorOptions;
    this.ratio = sampleRate / opts.targetRate;
    this.chunk = new Int16Array(opts.chunkSamples);
    this.filled = 0;
    this.acc = 0;
    this.accCount = 0;
    this.position = 0;   // input samples consumed towards the next output sample
    this.sumSquares = 0;
    this.peak = 0;
  }
  process(inputs) {
    const input = inputs[0];
    if (!input || input.length === 0) return true;
    const channels = input.length;
    const frames = input[0].length;
    for (let i = 0; i < frames; i++) {
      let sample = 0;
      for (let c = 0; c < channels; c++) sample += input[c][i];
      sample /= channels;
      this.acc += sample;
      this.accCount += 1;
      this.position += 1;
      if (this.position >= this.ratio) {
        this.position -= this.ratio;
        const value = Math.max(-1, Math.min(1, this.acc / this.accCount));
        this.acc = 0;
        this.accCount = 0;
        this.sumSquares += value * value;
        this.peak = Math.max(this.peak, Math.abs(value));
        this.chunk[this.filled++] = value < 0 ? value * 0x8000 : value * 0x7fff;
        if (this.filled === this.chunk.length) {
          const rms = Math.sqrt(this.sumSquares / this.filled);
          const pcm = this.chunk.buffer.slice(0);
          this.port.postMessage({ pcm, rms, peak: this.peak }, [pcm]);
          this.filled = 0;
          this.sumSquares = 0;
          this.peak = 0;
        }
      }
    }
    return true;
  }
}
registerProcessor("pcm16-downsampler", Pcm16Downsampler);
`;

function microphoneSupport() {
  if (!window.isSecureContext) return "insecure";
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) return "no-getusermedia";
  if (typeof AudioWorkletNode === "undefined") return "no-audioworklet";
  return "ok";
}

function levelToPercent(rms) {
  // -60 dBFS (quiet room) to 0 dBFS (full scale) on the meter.
  const db = 20 * Math.log10(Math.max(rms, 1e-6));
  return Math.max(0, Math.min(100, ((db + 60) / 60) * 100));
}

function render({ model, el }) {
  el.classList.add("asr-mic");
  const button = document.createElement("button");
  button.className = "asr-mic-button jupyter-button widget-button";
  const meter = document.createElement("div");
  meter.className = "asr-mic-meter";
  const bar = document.createElement("div");
  bar.className = "asr-mic-level";
  meter.appendChild(bar);
  const note = document.createElement("span");
  note.className = "asr-mic-note";
  el.append(button, meter, note);

  let session = null; // {stream, context, node}
  let chunks = 0;

  const support = microphoneSupport();
  model.set("support", support);
  model.save_changes();

  function refresh() {
    const recording = session !== null;
    button.textContent = recording ? model.get("stop_label") : model.get("start_label");
    button.disabled = support !== "ok" || model.get("disabled");
    button.classList.toggle("mod-danger", recording);
    button.classList.toggle("mod-primary", !recording);
    note.textContent = model.get("note");
  }

  function report(type, extra) {
    model.send({ type, ...extra });
  }

  async function start() {
    const targetRate = model.get("sample_rate");
    const chunkSamples = Math.round((targetRate * model.get("chunk_ms")) / 1000);
    let stream;
    try {
      // The browser's voice processing is off: the models learned from unprocessed recordings,
      // and nothing is played back, so there is no echo to cancel.
      stream = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
        video: false,
      });
    } catch (err) {
      report("error", { name: err.name, message: err.message });
      return;
    }

    let context = new AudioContext({ sampleRate: targetRate });
    let source;
    try {
      source = context.createMediaStreamSource(stream);
    } catch (err) {
      // Firefox cannot connect a stream to a context of another rate: resample in the worklet.
      await context.close();
      context = new AudioContext();
      source = context.createMediaStreamSource(stream);
    }
    const url = URL.createObjectURL(new Blob([WORKLET], { type: "application/javascript" }));
    try {
      await context.audioWorklet.addModule(url);
    } finally {
      URL.revokeObjectURL(url);
    }

    const node = new AudioWorkletNode(context, "pcm16-downsampler", {
      processorOptions: { targetRate, chunkSamples },
    });
    const mute = context.createGain();
    mute.gain.value = 0;
    source.connect(node);
    node.connect(mute);
    mute.connect(context.destination);

    node.port.onmessage = (event) => {
      const { pcm, rms } = event.data;
      chunks += 1;
      bar.style.width = `${levelToPercent(rms)}%`;
      model.send({ type: "audio", seq: chunks, rms }, undefined, [pcm]);
    };
    await context.resume();
    session = { stream, context, node };
    report("started", { sample_rate: targetRate, input_rate: context.sampleRate });
    refresh();
  }

  async function stop() {
    if (!session) return;
    const { stream, context, node } = session;
    session = null;
    node.port.onmessage = null;
    stream.getTracks().forEach((track) => track.stop());
    await context.close();
    bar.style.width = "0%";
    report("stopped", { chunks });
    refresh();
  }

  button.addEventListener("click", () => {
    (session ? stop() : start()).catch((err) => report("error", { name: err.name, message: err.message }));
  });
  model.on("change:start_label", refresh);
  model.on("change:stop_label", refresh);
  model.on("change:note", refresh);
  model.on("change:disabled", refresh);
  // The kernel sets `active` to false to end a session (stop button elsewhere, lost connection).
  model.on("change:active", () => {
    if (!model.get("active") && session) stop();
  });
  refresh();
  return () => {
    if (session) stop();
  };
}

export default { render };
