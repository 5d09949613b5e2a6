/*
 * flask-async-request browser client: start a job, poll it honouring Retry-After,
 * report progress, cancel it. No build step, no dependency.
 *
 *   const job = await AsyncRequest.start("/reports", {body: JSON.stringify({month: 3})});
 *   const result = await job.wait({onProgress: (fraction, message) => bar.value = fraction});
 *   // result: {status: "processed" | "failed" | "cancelled", response: {status_code, body}}
 *   job.cancel();  // from a button: the pending wait() resolves with status "cancelled"
 */
(function (root) {
  "use strict";

  var DEFAULT_HEADER = "X-JOB-AUTHORIZATION";

  function AsyncRequestError(message, response, body) {
    var error = new Error(message);
    error.name = "AsyncRequestError";
    error.response = response;
    error.body = body;
    return error;
  }

  function readJson(response) {
    return response.text().then(function (text) {
      try {
        return text ? JSON.parse(text) : null;
      } catch (e) {
        return null;
      }
    });
  }

  function errorMessage(response, body) {
    if (body && body.errors && body.errors.length) {
      return body.errors[0].message;
    }
    return "HTTP " + response.status;
  }

  function sleep(seconds, signal) {
    return new Promise(function (resolve) {
      var timer = setTimeout(resolve, seconds * 1000);
      if (signal) {
        signal.addEventListener("abort", function () {
          clearTimeout(timer);
          resolve();
        });
      }
    });
  }

  /** A started job: its token and status url. */
  function Job(token, url, options) {
    this.token = token;
    this.url = url;
    this.header = (options && options.header) || DEFAULT_HEADER;
    this._wake = null;
  }

  Job.prototype._headers = function () {
    var headers = {Accept: "application/json"};
    headers[this.header] = "Bearer " + this.token;
    return headers;
  };

  /** One poll: resolves with {done, status, body, retryAfter}. */
  Job.prototype.poll = function () {
    var job = this;
    return fetch(job.url, {headers: job._headers(), cache: "no-store"}).then(function (response) {
      return readJson(response).then(function (body) {
        if (response.status === 202) {
          var retryAfter = parseFloat(response.headers.get("Retry-After"));
          return {
            done: false,
            status: body && body.status,
            body: body,
            retryAfter: isNaN(retryAfter) ? 1 : retryAfter,
          };
        }
        if (response.status === 200) {
          return {done: true, status: body.status, body: body, retryAfter: 0};
        }
        throw AsyncRequestError(errorMessage(response, body), response, body);
      });
    });
  };

  /**
   * Poll until the job finishes; resolves with the final answer
   * ({status, response: {status_code, body}}).
   * options.onProgress(fraction | null, message | null, status) is called on every 202;
   * options.minInterval / maxInterval (seconds) bound the Retry-After the server asks for.
   */
  Job.prototype.wait = function (options) {
    options = options || {};
    var job = this;
    var minInterval = options.minInterval || 0;
    var maxInterval = options.maxInterval || 30;
    function loop() {
      return job.poll().then(function (answer) {
        if (answer.done) {
          return answer.body;
        }
        if (options.onProgress) {
          options.onProgress(answer.body.progress, answer.body.message, answer.status);
        }
        var interval = Math.min(Math.max(answer.retryAfter, minInterval), maxInterval);
        var controller = typeof AbortController === "function" ? new AbortController() : null;
        job._wake = controller;
        return sleep(interval, controller && controller.signal).then(loop);
      });
    }
    return loop();
  };

  /** Cancel the job; resolves with the final answer (status "cancelled"). */
  Job.prototype.cancel = function () {
    var job = this;
    return fetch(job.url, {method: "DELETE", headers: job._headers()}).then(function (response) {
      return readJson(response).then(function (body) {
        if (job._wake) {
          job._wake.abort(); // a pending wait() polls at once and sees the cancellation
        }
        if (response.status === 200) {
          return body;
        }
        throw AsyncRequestError(errorMessage(response, body), response, body);
      });
    });
  };

  /**
   * POST (by default) to a view that starts a job and answers 202 with {token, url}
   * (or a Location header); resolves with a Job.
   */
  function start(url, init, options) {
    init = Object.assign({method: "POST"}, init || {});
    init.headers = Object.assign(
      {Accept: "application/json", "Content-Type": "application/json"},
      init.headers || {}
    );
    return fetch(url, init).then(function (response) {
      return readJson(response).then(function (body) {
        if (response.status !== 202 || !body || !body.token) {
          throw AsyncRequestError(errorMessage(response, body), response, body);
        }
        var statusUrl = body.url || response.headers.get("Location");
        return new Job(body.token, statusUrl, options);
      });
    });
  }

  root.AsyncRequest = {start: start, Job: Job};
})(typeof window !== "undefined" ? window : this);
