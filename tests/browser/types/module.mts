// Uses of the ES module's documented API: each must compile under --strict, and
// each @ts-expect-error line must be refused.
import {
  AsyncRequestError,
  DEFAULT_HEADER,
  Job,
  poll,
  saveBlob,
  start,
  type JobAnswer,
  type SavedResult,
  type PollResult,
  type StoredReply,
} from "../../../flask_async_request/static/async-request.mjs";

export async function documented(bar: HTMLProgressElement): Promise<string | null> {
  const controller = new AbortController();
  const form = new FormData();
  form.append("file", new Blob(["x"]), "x.txt");
  await start("/upload", { body: form, headers: new Headers({ "X-Test": "1" }) });
  await start("/search", { body: new URLSearchParams({ q: "x" }), headers: [["X-Test", "1"]] });
  await start(new URL("/blob", location.href), { method: "PUT", body: new Blob(["raw"]) });
  const job = await start(
    "/reports",
    { body: { month: 3, tags: ["a"] }, headers: { "Idempotency-Key": "k" } },
    { signal: controller.signal, retry: { attempts: 4, baseDelay: 0.2, statuses: [502, 503] } },
  );
  const answer: JobAnswer = await job.wait({
    signal: controller.signal,
    timeout: 60,
    longPoll: 10,
    minInterval: 0.2,
    onProgress: (fraction, message, status, body) => {
      if (fraction !== null) bar.value = fraction;
      const text: string | null = message;
      const pending: "waiting" | "processing" | null = status;
      void text, pending, body?.progress;
    },
  });
  const reply: StoredReply = answer.response;
  const code: number = reply.status_code;
  void code;

  const once: PollResult = await job.poll({ longPoll: 5, signal: controller.signal });
  if (once.done) {
    const finished: "processed" | "failed" | "cancelled" = once.body.status;
    void finished;
  } else {
    const seconds: number = once.retryAfter;
    void seconds, once.body?.message;
  }
  await job.cancel({ retry: false });
  await poll(job.url);
  await poll({ url: job.url, token: job.token }, { longPoll: false });
  await poll(new Job(null, "/async_request/job/abc", { header: DEFAULT_HEADER }));

  try {
    await start("/x");
  } catch (error) {
    if (error instanceof AsyncRequestError) {
      const status: number | null = error.status;
      const response: Response | null = error.response;
      const body: unknown = error.body;
      void status, response, body;
    }
  }

  // A reply that is a file: a Response, a Blob, saved, or a signed link.
  const seen: JobAnswer | null = job.answer;
  const size: number | undefined = seen?.response.size;
  const href: string | undefined = answer.response.download_href;
  const kept: [string, string][] | undefined = answer.response.headers;
  const text: string = answer.response.body;
  const response: Response = await job.result({ signal: controller.signal, headers: { "X-Test": "1" } });
  const blob: Blob = await job.blob({ verify: false, timeout: 30 });
  const saved: SavedResult = await job.save("export.csv");
  const named: SavedResult = await job.save({ signal: controller.signal });
  await job.save();
  const name: string = named.filename;
  const link = document.createElement("a");
  link.href = await job.downloadUrl();
  link.download = "";
  saveBlob(new Blob(["a,b\n"], { type: "text/csv" }), "rows.csv");
  saveBlob(saved.blob);
  void size, href, kept, text, response, blob, name;

  // @ts-expect-error: the answer is read-only
  job.answer = null;
  // @ts-expect-error: save's filename is a string
  await job.save(42);
  // @ts-expect-error: verify is a boolean
  await job.blob({ verify: "sha256" });
  // @ts-expect-error: downloadUrl resolves with a string
  const notUrl: URL = await job.downloadUrl();
  void notUrl;
  // @ts-expect-error: the status is one of the finished ones
  const wrong: "waiting" = answer.status;
  // @ts-expect-error: longPoll is seconds or a boolean
  await job.wait({ longPoll: "20" });
  // @ts-expect-error: signal is an AbortSignal, not its controller
  await job.wait({ signal: controller });
  // @ts-expect-error: the token is read-only
  job.token = "other";
  // @ts-expect-error: onProgress gets a number or null
  await job.wait({ onProgress: (fraction: string) => fraction });
  void wrong;
  return job.token;
}
