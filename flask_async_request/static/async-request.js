// The classic-script form of async-request.mjs: the same code, defining the global
// AsyncRequest. Written by `python -m tests.browser.jsbuild` from async-request.mjs;
// edit that file, not this one.
(function (root) {
  "use strict";

  /*
   * flask-async-request browser client: start a job, wait for its stored reply
   * (its event stream where the server holds one, else long polling, Retry-After,
   * retries of 429, 503 and network errors), report its
   * progress, cancel it, stop waiting with an AbortSignal. No build step, no
   * dependency. async-request.mjs is the ES module; async-request.js is the same
   * code as a classic script that defines the global AsyncRequest.
   *
   *   import {start} from "/async_request/static/async-request.mjs";
   *
   *   const job = await start("/reports", {body: {month: 3}});
   *   const answer = await job.wait({signal, onProgress: (fraction, message) => bar.value = fraction});
   *   // answer: {status: "processed" | "failed" | "cancelled", response: {status_code, body}}
   *   job.cancel();  // from a button: the pending wait() resolves with status "cancelled"
   *
   *   // A reply that is a file (an export, a PDF): as a Blob, or saved under the server's name.
   *   const blob = await job.blob();
   *   await job.save();              // the Content-Disposition's filename, or save("name.csv")
   *   link.href = await job.downloadUrl();  // a short-lived signed link for <a href download>
   */

  /** The header that carries the token to the shared status endpoint. */
  const DEFAULT_HEADER = "X-JOB-AUTHORIZATION";

  const FINISHED = ["processed", "failed", "cancelled"];
  /** Seconds a poll asks the server to hold it (Prefer: wait) when nothing asks for progress. */
  const LONG_POLL = 20;
  const RETRY = {attempts: 8, baseDelay: 0.5, maxDelay: 30, statuses: [429, 503]};
  // A server that answers Retry-After: 0 and does not hold polls would be polled in a tight loop.
  const SHORTEST_PAUSE = 0.05;

  /** A refusal: a status the request did not expect, or a server out of reach after retries. */
  class AsyncRequestError extends Error {
    constructor(message, options = {}) {
      super(message, "cause" in options ? {cause: options.cause} : undefined);
      this.name = "AsyncRequestError";
      this.response = options.response || null;
      this.status = this.response ? this.response.status : null;
      this.body = options.body === undefined ? null : options.body;
    }
  }

  function abortReason(signal) {
    return signal.reason !== undefined
      ? signal.reason
      : new DOMException("This operation was aborted", "AbortError");
  }

  /** Resolves after ``seconds``; rejects with the signal's reason as soon as it aborts. */
  function sleep(seconds, signal) {
    return new Promise((resolve, reject) => {
      if (signal && signal.aborted) {
        reject(abortReason(signal));
        return;
      }
      const onAbort = () => {
        clearTimeout(timer);
        reject(abortReason(signal));
      };
      const timer = setTimeout(() => {
        if (signal) signal.removeEventListener("abort", onAbort);
        resolve();
      }, Math.max(0, seconds) * 1000);
      if (signal) signal.addEventListener("abort", onAbort, {once: true});
    });
  }

  /** One signal that aborts when any of ``signals`` does; ``release`` detaches it. */
  function anySignal(signals) {
    const controller = new AbortController();
    const detach = [];
    for (const signal of signals) {
      if (!signal) continue;
      if (signal.aborted) {
        controller.abort(abortReason(signal));
        break;
      }
      const onAbort = () => controller.abort(abortReason(signal));
      signal.addEventListener("abort", onAbort, {once: true});
      detach.push(() => signal.removeEventListener("abort", onAbort));
    }
    return {signal: controller.signal, release: () => detach.forEach((undo) => undo())};
  }

  /** Headers from any number of Headers objects, arrays of pairs or plain objects; later ones win. */
  function mergeHeaders(...sources) {
    const merged = new Headers();
    for (const source of sources) {
      if (source) new Headers(source).forEach((value, name) => merged.set(name, value));
    }
    return merged;
  }

  function isPlainData(value) {
    if (Array.isArray(value)) return true;
    if (value === null || typeof value !== "object") return false;
    const prototype = Object.getPrototypeOf(value);
    return prototype === Object.prototype || prototype === null;
  }

  /**
   * The body to send: a plain object or an array becomes JSON, labelled so; a
   * string is sent as it is and, as in the first version of this client,
   * labelled JSON unless the headers name a type; anything else (FormData, Blob,
   * URLSearchParams, a buffer, a stream) goes to fetch untouched, which labels it.
   */
  function encodeBody(body, headers) {
    if (body === undefined || body === null) return body;
    if (isPlainData(body)) {
      if (!headers.has("Content-Type")) headers.set("Content-Type", "application/json");
      return JSON.stringify(body);
    }
    if (typeof body === "string" && !headers.has("Content-Type")) {
      headers.set("Content-Type", "application/json");
    }
    return body;
  }

  /** Seconds from a Retry-After value (delay-seconds or an HTTP-date), or null. */
  function retryAfterSeconds(value) {
    if (value === null || value === undefined) return null;
    const text = String(value).trim();
    if (/^\d+(\.\d+)?$/.test(text)) return parseFloat(text);
    const date = Date.parse(text);
    return isNaN(date) ? null : Math.max(0, (date - Date.now()) / 1000);
  }

  /** Seconds the server says it held the poll (Preference-Applied: wait=N), 0 if it did not. */
  function appliedWait(response) {
    const match = /(?:^|[,;\s])wait\s*=\s*"?(\d+)/i.exec(
      response.headers.get("Preference-Applied") || ""
    );
    return match ? parseInt(match[1], 10) : 0;
  }

  function retryPolicy(retry) {
    if (retry === false) return {attempts: 1, baseDelay: 0, maxDelay: 0, statuses: []};
    return Object.assign({}, RETRY, retry || {});
  }

  /** The pause before attempt ``attempt + 1``: Retry-After if given, else exponential, jittered. */
  function backoff(policy, attempt, retryAfter) {
    if (retryAfter !== null) {
      // Never earlier than the server asked; a little later, so clients told alike spread out.
      const asked = Math.min(retryAfter, policy.maxDelay);
      return asked + Math.random() * Math.min(1, asked / 10);
    }
    const ceiling = Math.min(policy.maxDelay, policy.baseDelay * 2 ** (attempt - 1));
    return ceiling / 2 + (Math.random() * ceiling) / 2;
  }

  async function readJson(response) {
    const text = await response.text();
    try {
      return text ? JSON.parse(text) : null;
    } catch (error) {
      return null;
    }
  }

  function errorMessage(response, body) {
    if (body && Array.isArray(body.errors) && body.errors.length && body.errors[0].message) {
      return body.errors[0].message;
    }
    return "HTTP " + response.status;
  }

  /**
   * fetch, asked again after a network error (if ``retryNetwork``) or a status
   * of the retry policy, up to its number of attempts. Resolves with the first
   * other response; rejects with the signal's reason as soon as it aborts.
   */
  async function send(url, init, {signal, retry, retryNetwork = true}) {
    const policy = retryPolicy(retry);
    for (let attempt = 1; ; attempt++) {
      if (signal && signal.aborted) throw abortReason(signal);
      // Built first, so a request the browser refuses to make (a bad url, method
      // or body) throws its TypeError here, once, instead of being retried as
      // if the network had failed.
      const request = new Request(url, Object.assign({}, init, {signal}));
      let response = null;
      let failure = null;
      try {
        response = await fetch(request);
      } catch (error) {
        if (signal && signal.aborted) throw abortReason(signal);
        // fetch rejects with a TypeError when the request never got an answer.
        if (!(error instanceof TypeError) || !retryNetwork) throw error;
        failure = error;
      }
      if (response && !policy.statuses.includes(response.status)) return response;
      if (attempt >= policy.attempts) {
        if (response) {
          const body = await readJson(response);
          throw new AsyncRequestError(errorMessage(response, body), {response, body});
        }
        throw new AsyncRequestError(
          `Could not reach ${url} (${attempt} attempts): ${failure.message}`,
          {cause: failure}
        );
      }
      const retryAfter = response ? retryAfterSeconds(response.headers.get("Retry-After")) : null;
      await sleep(backoff(policy, attempt, retryAfter), signal);
    }
  }

  function isFinalAnswer(body) {
    return (
      body !== null &&
      typeof body === "object" &&
      FINISHED.includes(body.status) &&
      body.response !== null &&
      typeof body.response === "object"
    );
  }

  /**
   * The filename a Content-Disposition value names, or null: its filename*
   * (RFC 8187, percent-encoded UTF-8) before its filename, as RFC 6266 asks.
   */
  function dispositionFilename(value) {
    if (!value) return null;
    const extended = /(?:^|;)\s*filename\*\s*=\s*([^';]*)'[^';]*'([^;\s]+)/i.exec(value);
    if (extended && /^utf-8$/i.test(extended[1].trim())) {
      try {
        return decodeURIComponent(extended[2]);
      } catch (error) {
        // Badly encoded: the plain filename, if any, names it.
      }
    }
    const plain = /(?:^|;)\s*filename\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;]*))/i.exec(value);
    if (!plain) return null;
    const name = plain[1] !== undefined ? plain[1].replace(/\\(.)/g, "$1") : plain[2].trim();
    return name || null;
  }

  /** Hex SHA-256 of ``blob``, or null where the page has no Web Crypto (an insecure origin). */
  async function sha256Hex(blob) {
    const subtle = globalThis.crypto && globalThis.crypto.subtle;
    if (!subtle) return null;
    const digest = new Uint8Array(await subtle.digest("SHA-256", await blob.arrayBuffer()));
    return Array.from(digest, (byte) => byte.toString(16).padStart(2, "0")).join("");
  }

  /**
   * Hand ``blob`` to the browser's downloads under ``filename``: an object url
   * clicked in an <a download>, revoked once the download has it.
   */
  function saveBlob(blob, filename) {
    const url = URL.createObjectURL(blob);
    const link = document.createElement("a");
    link.href = url;
    link.download = filename || "download";
    link.rel = "noopener";
    link.style.display = "none";
    document.body.appendChild(link);
    try {
      link.click();
    } finally {
      link.remove();
      // The download reads the url after the click's task; a minute is ample.
      setTimeout(() => URL.revokeObjectURL(url), 60000);
    }
  }

  /** A finished answer as the client gives it: a reply held in the result store has body "". */
  function finishedAnswer(body) {
    if (typeof body.response.body !== "string") body.response.body = "";
    return body;
  }

  /**
   * The answer of a processed job whose status url redirected to its result:
   * what the result's own headers say (its url, type, size, and SHA-256 from its
   * strong ETag). The worker's status code is not among them: 200.
   */
  function redirectedAnswer(response) {
    const reply = {status_code: 200, body: "", href: response.url};
    const type = response.headers.get("Content-Type");
    if (type) reply.content_type = type;
    const length = response.headers.get("Content-Length");
    if (length !== null && /^\d+$/.test(length)) reply.size = parseInt(length, 10);
    const etag = /^"([0-9a-f]{64})"$/.exec(response.headers.get("ETag") || "");
    if (etag) reply.sha256 = etag[1];
    return {status: "processed", response: reply};
  }

  /** Whether this browser can read a fetch's body as it arrives. */
  function canStream() {
    return typeof ReadableStream !== "undefined" && typeof TextDecoder !== "undefined";
  }

  /** Whether ``url`` names the job by itself (its token in the path), so no header is needed. */
  function carriesToken(url, token) {
    return url.includes(token) || url.includes(encodeURIComponent(token));
  }

  /** A started job: its token (or null) and its status url. */
  class Job {
    /**
     * @param token the job's token; null for a status url that needs none.
     * @param url the job's own status url (the Location of its 202), or the shared one.
     * @param options defaults for every poll, wait and cancel of this job.
     */
    constructor(token, url, options = {}) {
      this.token = token || null;
      this.url = String(url);
      this.header = options.header || DEFAULT_HEADER;
      this.options = Object.assign({}, options);
      delete this.options.signal;
      /** The answer of the finished job, once a poll, wait or cancel has seen it; else null. */
      this.answer = null;
      this._settled = null;
      this._wakers = new Set();
      this._redirected = null;
    }

    _headers(extra, url = this.url, accept = "application/json") {
      const headers = mergeHeaders({Accept: accept}, this.options.headers, extra);
      // The job's own url carries the token; the shared endpoint needs it in the header.
      if (this.token && !carriesToken(url, this.token)) {
        headers.set(this.header, "Bearer " + this.token);
      }
      return headers;
    }

    /**
     * One poll: resolves with {done, status, body, retryAfter, waited, response}.
     * options.longPoll: seconds the server may hold the poll (Prefer: wait=N);
     * none by default. Rejects with an AsyncRequestError for an answer that is
     * neither pending nor the job's reply.
     */
    async poll(options = {}) {
      const longPoll = options.longPoll ? Math.max(1, Math.ceil(options.longPoll)) : 0;
      const headers = this._headers(longPoll ? {Prefer: "wait=" + longPoll} : null);
      const retry = "retry" in options ? options.retry : this.options.retry;
      const response = await send(this.url, {headers, cache: "no-store"}, {
        signal: options.signal,
        retry,
      });
      if (response.redirected && response.status === 200) {
        const answer = this._takeRedirected(response);
        return {done: true, status: "processed", body: answer, retryAfter: 0, waited: 0, response};
      }
      const body = await readJson(response);
      const waited = appliedWait(response);
      if (response.status === 202) {
        const location = response.headers.get("Location");
        if (location) this.url = new URL(location, response.url || this.url).href;
        const retryAfter = retryAfterSeconds(response.headers.get("Retry-After"));
        return {
          done: false,
          status: (body && body.status) || null,
          body,
          retryAfter: retryAfter === null ? 1 : retryAfter,
          waited,
          response,
        };
      }
      if (isFinalAnswer(body)) {
        this.answer = finishedAnswer(body);
        return {done: true, status: body.status, body, retryAfter: 0, waited, response};
      }
      throw new AsyncRequestError(errorMessage(response, body), {response, body});
    }

    /**
     * ASYNC_REQUEST_REDIRECT_FINISHED: the status url sent the processed job to
     * its result (303), and fetch followed: ``response`` is the result itself,
     * kept unread for result(). Its answer, which becomes the job's.
     */
    _takeRedirected(response) {
      const answer = redirectedAnswer(response);
      this.answer = answer;
      // An earlier poll's result, never read: this one replaces it.
      if (this._redirected && this._redirected.body) this._redirected.body.cancel();
      this._redirected = response;
      return answer;
    }

    /**
     * Poll until the job finishes; resolves with its answer
     * ({status, response: {status_code, body}}). See the options in the docs:
     * signal, onProgress, longPoll, timeout, minInterval, maxInterval, retry.
     */
    async wait(options = {}) {
      const settings = Object.assign({}, this.options, options);
      const minInterval = settings.minInterval || 0;
      const maxInterval = settings.maxInterval === undefined ? 30 : settings.maxInterval;
      const timeout = new AbortController();
      const control = anySignal([options.signal, timeout.signal]);
      let timer = null;
      if (settings.timeout !== undefined && settings.timeout !== null) {
        timer = setTimeout(() => {
          const message = `The job did not finish within ${settings.timeout} s.`;
          timeout.abort(new DOMException(message, "TimeoutError"));
        }, settings.timeout * 1000);
      }
      let retryAfter = 1;
      try {
        for (;;) {
          if (this._settled) return this._settled;
          const waker = new AbortController();
          this._wakers.add(waker);
          const round = anySignal([control.signal, waker.signal]);
          try {
            if (settings.stream !== false && !this._noStream && canStream()) {
              const streamed = await this._follow(settings, round.signal);
              if (streamed) return streamed;
              // The server answers streams as polls (or stopped streaming): poll from now on.
              this._noStream = true;
              continue;
            }
            const longPoll = chooseLongPoll(settings, retryAfter, minInterval, maxInterval);
            const sent = Date.now();
            const answer = await this.poll({signal: round.signal, longPoll, retry: settings.retry});
            if (answer.done) return answer.body;
            retryAfter = answer.retryAfter;
            if (settings.onProgress) {
              const body = answer.body || {};
              settings.onProgress(
                body.progress === undefined ? null : body.progress,
                body.message === undefined ? null : body.message,
                answer.status,
                answer.body
              );
            }
            // A server that held the poll has waited already; one that ignored
            // Prefer (or claims to have waited and did not) is polled after its Retry-After.
            const held = answer.waited > 0 && Date.now() - sent >= (answer.waited * 1000) / 2;
            const pause = held
              ? minInterval
              : Math.max(SHORTEST_PAUSE, Math.min(Math.max(retryAfter, minInterval), maxInterval));
            await sleep(pause, round.signal);
          } catch (error) {
            // cancel() woke this round: the loop returns the cancelled answer.
            if (!(waker.signal.aborted && !control.signal.aborted)) {
              throw control.signal.aborted ? abortReason(control.signal) : error;
            }
          } finally {
            round.release();
            this._wakers.delete(waker);
          }
        }
      } finally {
        if (timer !== null) clearTimeout(timer);
        control.release();
      }
    }

    /**
     * Follow the job's event stream (fetch, so the token may go in a header too);
     * resolves with its answer, or null where the server answers with JSON (it
     * cannot hold streams): wait() polls then. A stream that ends before the
     * job does is opened again after its retry, with Last-Event-ID.
     */
    async _follow(settings, signal) {
      let lastId = null;
      let retry = 1;
      const state = {status: null, progress: null, message: null};
      // Each event is reported as a 202's body would say the job is now.
      const report = () => {
        if (settings.onProgress) {
          const body = {status: state.status, progress: state.progress, message: state.message};
          settings.onProgress(state.progress, state.message, state.status, body);
        }
      };
      for (;;) {
        const extra = {Accept: "text/event-stream"};
        if (lastId !== null) extra["Last-Event-ID"] = lastId;
        const response = await send(this.url, {headers: this._headers(extra), cache: "no-store"}, {
          signal,
          retry: settings.retry,
        });
        const type = (response.headers.get("Content-Type") || "").split(";")[0].trim();
        if (response.status !== 200 || type !== "text/event-stream" || !response.body) {
          if (response.status === 204) return null;
          // A long poll's answer (the server cannot hold streams), or a refusal.
          if (response.redirected && response.status === 200) return this._takeRedirected(response);
          const body = await readJson(response);
          if (response.status === 200 && isFinalAnswer(body)) {
            this.answer = finishedAnswer(body);
            return this.answer;
          }
          if (response.status !== 202) {
            throw new AsyncRequestError(errorMessage(response, body), {response, body});
          }
          if (body) {
            Object.assign(state, {status: body.status, progress: body.progress, message: body.message});
            report();
          }
          return null;
        }
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        let buffer = "";
        let event = {name: "", data: []};
        try {
          for (;;) {
            const {value, done} = await reader.read();
            if (done) break;
            buffer += decoder.decode(value, {stream: true});
            let newline;
            while ((newline = buffer.indexOf("\n")) >= 0) {
              const line = buffer.slice(0, newline).replace(/\r$/, "");
              buffer = buffer.slice(newline + 1);
              if (line === "") {
                const answer = this._dispatch(event, state, report, response);
                if (answer) return answer;
                event = {name: "", data: []};
                continue;
              }
              if (line.startsWith(":")) continue;
              const colon = line.indexOf(":");
              const field = colon < 0 ? line : line.slice(0, colon);
              const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
              if (field === "event") event.name = text;
              else if (field === "data") event.data.push(text);
              else if (field === "id") lastId = text;
              else if (field === "retry" && /^\d+$/.test(text)) retry = parseInt(text, 10) / 1000;
            }
          }
        } catch (error) {
          if (signal && signal.aborted) throw abortReason(signal);
          // A dropped stream (a network error) is opened again; anything else is thrown.
          if (!(error instanceof TypeError)) throw error;
        } finally {
          reader.cancel().catch(() => {});
        }
        await sleep(Math.max(SHORTEST_PAUSE, retry), signal);
      }
    }

    /** One event of the stream: the answer for its end, else null after reporting it. */
    _dispatch(event, state, report, response) {
      if (!event.data.length) return null;
      let body = null;
      try {
        body = JSON.parse(event.data.join("\n"));
      } catch (error) {
        return null;
      }
      if (event.name === "end" && isFinalAnswer(body)) {
        this.answer = finishedAnswer(body);
        return this.answer;
      }
      if (event.name === "gone") {
        throw new AsyncRequestError(errorMessage(response, body), {response, body});
      }
      if (event.name === "status") state.status = body.status;
      else if (event.name === "progress") {
        state.progress = body.progress;
        state.message = body.message;
      } else return null;
      report();
      return null;
    }

    /**
     * Cancel the job (DELETE); resolves with its answer, status "cancelled", and
     * a pending wait() resolves with it too. A 503 is asked again; a network
     * error is not, since the first DELETE may have cancelled the job already.
     */
    async cancel(options = {}) {
      const retry = "retry" in options ? options.retry : this.options.retry;
      const response = await send(this.url, {method: "DELETE", headers: this._headers()}, {
        signal: options.signal,
        retry,
        retryNetwork: false,
      });
      const body = await readJson(response);
      if (response.status === 200 && isFinalAnswer(body)) {
        this._settled = finishedAnswer(body);
        this.answer = body;
        this._wakers.forEach((waker) => waker.abort());
        return body;
      }
      throw new AsyncRequestError(errorMessage(response, body), {response, body});
    }

    /** The processed job's answer: the one seen, else waited for; rejects for any other end. */
    async _processed(options) {
      const answer = this.answer || (await this.wait(options));
      if (answer.status !== "processed") {
        throw new AsyncRequestError(`The job is ${answer.status}; it has no result.`, {
          body: answer,
        });
      }
      return answer;
    }

    /**
     * The processed job's result as a Response, waiting for the job first if no
     * answer has been seen. A reply in the result store is fetched from its
     * result url (the envelope's href), with the token as the polls send it; a
     * reply kept as text is made into a Response from the envelope (its body as
     * UTF-8, its content type and kept headers). Rejects with an
     * AsyncRequestError for a job that was not processed, or a result url that
     * does not answer 200.
     */
    async result(options = {}) {
      const reply = (await this._processed(options)).response;
      if (this._redirected) {
        // The poll that saw the job finish has the result already, unread.
        const response = this._redirected;
        this._redirected = null;
        return response;
      }
      if (!reply.href) {
        const headers = new Headers(reply.headers || []);
        if (reply.content_type) headers.set("Content-Type", reply.content_type);
        return new Response(reply.body || "", {status: 200, headers});
      }
      const headers = this._headers(options.headers, reply.href, "*/*");
      const retry = "retry" in options ? options.retry : this.options.retry;
      const response = await send(reply.href, {headers, cache: "no-store"}, {
        signal: options.signal,
        retry,
      });
      if (response.status !== 200) {
        const body = await readJson(response);
        throw new AsyncRequestError(errorMessage(response, body), {response, body});
      }
      return response;
    }

    /**
     * The processed job's result as a Blob (typed with its content type), its
     * size and, where the page has Web Crypto, its SHA-256 checked against the
     * envelope's (verify: false skips the SHA-256).
     */
    async blob(options = {}) {
      return (await this._download(options)).blob;
    }

    async _download(options) {
      const response = await this.result(options);
      const blob = await response.blob();
      const reply = this.answer.response;
      if (typeof reply.size === "number" && blob.size !== reply.size) {
        throw new AsyncRequestError(
          `The download of ${reply.href} ended after ${blob.size} of ${reply.size} bytes.`,
          {response}
        );
      }
      if (reply.sha256 && options.verify !== false) {
        const digest = await sha256Hex(blob);
        if (digest !== null && digest !== reply.sha256) {
          throw new AsyncRequestError(`The download of ${reply.href} does not match its SHA-256.`, {
            response,
          });
        }
      }
      return {blob, response};
    }

    /**
     * Download the processed job's result and save it as a file: under
     * ``filename`` if given, else the name its Content-Disposition gives, else
     * "download". Resolves with {blob, filename}.
     */
    async save(filename, options = {}) {
      if (filename !== null && typeof filename === "object") {
        options = filename;
        filename = undefined;
      }
      const {blob, response} = await this._download(options);
      const name =
        filename || dispositionFilename(response.headers.get("Content-Disposition")) || "download";
      saveBlob(blob, name);
      return {blob, filename: name};
    }

    /**
     * A short-lived signed link to the processed job's result, for a plain
     * <a href download> or a download manager: no token in it, valid for
     * ASYNC_REQUEST_LINK_EXPIRATION (5 minutes by default) from now. One poll
     * asks the server for a link signed now (the job is waited for if it is
     * still running). Rejects for a job that was not processed, and for a reply
     * kept as text, which has no link: blob() and save() take both.
     */
    async downloadUrl(options = {}) {
      const retry = "retry" in options ? options.retry : this.options.retry;
      const once = await this.poll({signal: options.signal, retry});
      const answer = once.done ? once.body : await this._processed(options);
      if (answer.status !== "processed") {
        throw new AsyncRequestError(`The job is ${answer.status}; it has no result.`, {
          body: answer,
        });
      }
      if (!answer.response.download_href && this._redirected) {
        throw new AsyncRequestError(
          "The status url redirects to the result (ASYNC_REQUEST_REDIRECT_FINISHED), with no" +
            " envelope and so no download link; use blob() or save().",
          {body: answer}
        );
      }
      if (!answer.response.download_href) {
        throw new AsyncRequestError(
          "The job's reply is kept as text in its answer, with no download link; use blob() or save().",
          {body: answer}
        );
      }
      return answer.response.download_href;
    }
  }

  /**
   * Seconds of Prefer: wait for the next poll, 0 for none. By default (true) a
   * wait with onProgress is held for about the server's Retry-After, so progress
   * arrives as often as it would by plain polling and the end at once; without
   * onProgress, for LONG_POLL seconds.
   */
  function chooseLongPoll(settings, retryAfter, minInterval, maxInterval) {
    const longPoll = settings.longPoll === undefined ? true : settings.longPoll;
    if (longPoll === false || longPoll === 0 || longPoll === null) return 0;
    if (longPoll !== true) return Math.max(1, Math.ceil(longPoll));
    if (!settings.onProgress) return LONG_POLL;
    return Math.max(1, Math.ceil(Math.min(Math.max(retryAfter, minInterval), maxInterval)));
  }

  /**
   * Send the request that starts a job (POST unless init.method says otherwise)
   * and resolve with its Job once the view answers 202 with a token and a status
   * url (its Location, else its body's url). init is fetch's; its body may also
   * be a plain object, sent as JSON. A 429 (the owner is at a limit; nothing
   * was stored) is asked again after its Retry-After. A 503 or a network error
   * is retried only when the request has an Idempotency-Key, so that a retry
   * cannot start a second job.
   */
  async function start(url, init = {}, options = {}) {
    const headers = mergeHeaders({Accept: "application/json"}, init.headers);
    const body = encodeBody(init.body, headers);
    const request = Object.assign({}, init, {method: init.method || "POST", headers, body});
    const idempotent = headers.has("Idempotency-Key");
    // A 429 stored nothing: asking again cannot start a second job.
    const retry =
      idempotent || options.retry === false
        ? options.retry
        : Object.assign({}, options.retry || {}, {statuses: [429]});
    const response = await send(url, request, {
      signal: options.signal || init.signal,
      retry,
      retryNetwork: idempotent,
    });
    const answer = await readJson(response);
    if (response.status !== 202) {
      throw new AsyncRequestError(errorMessage(response, answer), {response, body: answer});
    }
    const token = answer && typeof answer.token === "string" ? answer.token : null;
    const location = response.headers.get("Location");
    const statusUrl = location
      ? new URL(location, response.url || String(url)).href
      : answer && typeof answer.url === "string"
        ? answer.url
        : null;
    if (!statusUrl) {
      throw new AsyncRequestError("The 202 answer names no status url (no Location, no url).", {
        response,
        body: answer,
      });
    }
    return new Job(token, statusUrl, options);
  }

  /**
   * Wait for a job started elsewhere (another page, before a reload): target is
   * a Job, its own status url, or {url, token}. Resolves as Job.wait() does.
   */
  function poll(target, options = {}) {
    let job = target;
    if (!(target instanceof Job)) {
      const named = typeof target === "string" || target instanceof URL ? {url: target} : target;
      if (!named || !named.url) {
        return Promise.reject(new TypeError("poll() needs a Job, a status url or {url, token}."));
      }
      job = new Job(named.token || null, named.url, options);
    }
    return job.wait(options);
  }

  root.AsyncRequest = {start: start, Job: Job};
  Object.assign(root.AsyncRequest, {AsyncRequestError: AsyncRequestError, DEFAULT_HEADER: DEFAULT_HEADER, poll: poll, saveBlob: saveBlob});
})(typeof globalThis !== "undefined" ? globalThis : window);
