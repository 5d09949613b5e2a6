/**
 * Types of the global AsyncRequest that the classic script async-request.js
 * defines: the same API as the ES module async-request.mjs. Reference this file
 * (/// <reference path="async-request.d.ts" />) in a page's TypeScript.
 */

import type * as AsyncRequestModule from "./async-request.mjs";

export type * from "./async-request.mjs";

declare global {
  /** The browser client: start(), poll(), Job, saveBlob(), AsyncRequestError, DEFAULT_HEADER. */
  var AsyncRequest: typeof AsyncRequestModule;
}
