// The global of the classic script has the module's API; its types come from the
// same declarations, imported for their types only.
/// <reference path="../../../flask_async_request/static/async-request.d.ts" />
import type { Job, JobAnswer } from "../../../flask_async_request/static/async-request.js";

export async function classic(): Promise<void> {
  const job: Job = await AsyncRequest.start("/reports", { body: JSON.stringify({ a: 1 }) });
  const answer: JobAnswer = await job.wait({ minInterval: 0.2 });
  const status: "processed" | "failed" | "cancelled" = answer.status;
  const header: "X-JOB-AUTHORIZATION" = AsyncRequest.DEFAULT_HEADER;
  const error = new AsyncRequest.AsyncRequestError("x", { response: null });
  const blob: Blob = await job.blob();
  const saved: { blob: Blob; filename: string } = await job.save();
  const link: string = await job.downloadUrl();
  AsyncRequest.saveBlob(blob, saved.filename);
  void status, header, error.status, link;
  // @ts-expect-error: start needs a url
  await AsyncRequest.start();
}
