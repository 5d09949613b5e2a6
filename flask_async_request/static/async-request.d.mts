/**
 * Types of the flask-async-request browser client, async-request.mjs.
 * async-request.d.ts gives the same types to the global AsyncRequest of the
 * classic script, async-request.js.
 */

/** The header that carries the token to the shared status endpoint. */
export declare const DEFAULT_HEADER: "X-JOB-AUTHORIZATION";

/** A job that has not finished yet. */
export type PendingStatus = "waiting" | "processing";

/** A job that has finished, one way or another. */
export type FinishedStatus = "processed" | "failed" | "cancelled";

/** The reply the job's worker stored. */
export interface StoredReply {
  /** The worker's status code: 500 when it raised, 499 when the job was cancelled. */
  status_code: number;
  /** The worker's body, as text; "" for a reply held in the result store (see href). */
  body: string;
  /** Present when the worker gave one. */
  content_type?: string;
  /** The headers the reply kept (Content-Disposition, ...), as [name, value] pairs. */
  headers?: [string, string][];
  /** A reply in the result store: its size in bytes. */
  size?: number;
  /** A reply in the result store: the SHA-256 of its bytes, in hex. */
  sha256?: string;
  /** A reply in the result store: its result url, read with the job's token. */
  href?: string;
  /** A reply in the result store: a short-lived signed link to it, with no token. */
  download_href?: string;
}

/** The answer of a finished job: what wait(), poll() and cancel() resolve with. */
export interface JobAnswer {
  status: FinishedStatus;
  response: StoredReply;
}

/** The body of a pending answer (202). */
export interface PendingBody {
  status: PendingStatus;
  /** A fraction from 0 to 1, or null before the worker reports any. */
  progress: number | null;
  message: string | null;
}

/** What one poll saw: the job is still pending. */
export interface PendingPoll {
  done: false;
  /** null when the 202 had no JSON body. */
  status: PendingStatus | null;
  body: PendingBody | null;
  /** Seconds the server asks to wait before polling again (1 when it did not say). */
  retryAfter: number;
  /** Seconds the server held the poll (Preference-Applied: wait=N); 0 when it did not. */
  waited: number;
  response: Response;
}

/** What one poll saw: the job has finished. */
export interface FinishedPoll {
  done: true;
  status: FinishedStatus;
  body: JobAnswer;
  retryAfter: 0;
  waited: number;
  response: Response;
}

export type PollResult = PendingPoll | FinishedPoll;

/**
 * How a request is asked again after a network error or a retried status:
 * exponential backoff with jitter, or the server's Retry-After (seconds or an
 * HTTP-date), at most maxDelay.
 */
export interface RetryOptions {
  /** Attempts of one request, the first included (8). */
  attempts?: number;
  /** Seconds of the first backoff (0.5); each next one doubles. */
  baseDelay?: number;
  /** Longest pause in seconds (30), Retry-After included. */
  maxDelay?: number;
  /** Statuses asked again ([429, 503]). */
  statuses?: readonly number[];
}

/** Defaults for every poll, wait and cancel of a job. */
export interface JobOptions {
  /** The token header of the shared endpoint (DEFAULT_HEADER). */
  header?: string;
  /** More headers for every poll and cancel, such as Authorization. */
  headers?: HeadersInit;
  /**
   * Prefer: wait=N on each poll of wait(). true (the default): 20 seconds, or
   * about the server's Retry-After when onProgress is given; a number: that
   * many seconds; false or 0: plain polling.
   */
  longPoll?: boolean | number;
  /** Retries of 429, 503 and network errors; false for none. */
  retry?: RetryOptions | false;
  /** Shortest pause between polls, in seconds (0). */
  minInterval?: number;
  /** Longest pause between polls, in seconds, whatever Retry-After says (30). */
  maxInterval?: number;
  /**
   * wait() follows the job's event stream (Accept: text/event-stream), so
   * onProgress gets every value the worker reports, and polls only where the
   * server answers with JSON; false: poll only. true by default.
   */
  stream?: boolean;
}

/** Options of start(): the job's defaults, and a signal that aborts the request. */
export interface StartOptions extends JobOptions {
  signal?: AbortSignal;
}

/** Called on every pending answer, and on every event of a stream with the job as it is now. */
export type ProgressCallback = (
  progress: number | null,
  message: string | null,
  status: PendingStatus | null,
  body: PendingBody | null,
) => void;

export interface WaitOptions extends JobOptions {
  /** Aborting it stops polling at once and rejects with its reason (an AbortError). */
  signal?: AbortSignal;
  onProgress?: ProgressCallback;
  /** Seconds after which waiting stops with a TimeoutError (DOMException); none by default. */
  timeout?: number;
}

export interface PollOptions {
  signal?: AbortSignal;
  /** Seconds the server may hold this poll (Prefer: wait=N); none by default. */
  longPoll?: number | false;
  retry?: RetryOptions | false;
}

export interface CancelOptions {
  signal?: AbortSignal;
  retry?: RetryOptions | false;
}

/** Options of result(), blob(), save() and downloadUrl(); those of wait() apply if the job is waited for. */
export interface ResultOptions extends WaitOptions {
  /** More headers for the request to the result url. */
  headers?: HeadersInit;
  /** false: do not check the downloaded bytes' SHA-256 (their size is checked always). */
  verify?: boolean;
}

/** What save() resolves with: the bytes saved and the name they were saved under. */
export interface SavedResult {
  blob: Blob;
  filename: string;
}

/** A body for start(): anything fetch takes, or a plain object or array, sent as JSON. */
export type StartBody = BodyInit | { [key: string]: unknown } | readonly unknown[] | null;

/** fetch's RequestInit, with a body that may also be a plain object. */
export interface StartInit extends Omit<RequestInit, "body"> {
  body?: StartBody;
}

/** A job's own status url, or the shared one with its token; or a Job. */
export type JobTarget = Job | string | URL | { url: string | URL; token?: string | null };

/** An answer the client did not expect, or a server out of reach after its retries. */
export declare class AsyncRequestError extends Error {
  constructor(
    message: string,
    options?: { response?: Response | null; body?: unknown; cause?: unknown },
  );
  readonly name: "AsyncRequestError";
  /** The response, or null when no request got one. */
  readonly response: Response | null;
  /** The response's status, or null. */
  readonly status: number | null;
  /** The response's body, parsed as JSON; null when it was not JSON. */
  readonly body: unknown;
}

/** A started job. */
export declare class Job {
  constructor(token: string | null, url: string | URL, options?: JobOptions);
  /** The job's token; null for a status url that needs none. */
  readonly token: string | null;
  /** Where the job is polled: its own url, or the shared endpoint (then the token goes in header). */
  url: string;
  /** The token header used with the shared endpoint. */
  readonly header: string;
  /** The defaults given to the constructor (or to start()). */
  readonly options: JobOptions;
  /** The finished job's answer, once a poll, wait or cancel has seen it; else null. */
  readonly answer: JobAnswer | null;
  /** One poll. */
  poll(options?: PollOptions): Promise<PollResult>;
  /** Poll until the job finishes. */
  wait(options?: WaitOptions): Promise<JobAnswer>;
  /** Cancel the job; a pending wait() resolves with the cancelled answer too. */
  cancel(options?: CancelOptions): Promise<JobAnswer>;
  /** The processed job's result as a Response (waited for first if need be). */
  result(options?: ResultOptions): Promise<Response>;
  /** The processed job's result as a Blob, its size and SHA-256 checked. */
  blob(options?: ResultOptions): Promise<Blob>;
  /** Download the result and save it as a file: under filename, else the server's name. */
  save(filename?: string, options?: ResultOptions): Promise<SavedResult>;
  save(options: ResultOptions): Promise<SavedResult>;
  /** A short-lived signed link to the result, for <a href download>; asked for now. */
  downloadUrl(options?: ResultOptions): Promise<string>;
}

/** Hand a Blob to the browser's downloads under filename (an object url in an <a download>). */
export declare function saveBlob(blob: Blob, filename?: string): void;

/** Send the request that starts a job; resolves with the Job of its 202. */
export declare function start(
  url: string | URL,
  init?: StartInit,
  options?: StartOptions,
): Promise<Job>;

/** Wait for a job started elsewhere, until it finishes. */
export declare function poll(target: JobTarget, options?: WaitOptions): Promise<JobAnswer>;
