/**
 * `emollm/serve`: the HTTP server of `emollm serve`, for embedding in a Node service.
 *
 * ```js
 * import { loadModel } from 'emollm';
 * import { createServer } from 'emollm/serve';
 * const server = await createServer({ model: await loadModel('emollm-7b'), apiKeys: ['k'] });
 * console.log(await server.listen(8080));
 * process.once('SIGTERM', () => server.close());   // drains in-flight requests, closes the model
 * ```
 */
export { createServer, type EmollmServer, type ServeOptions } from './server.js';
export { Scheduler, QueueFullError, TimeoutError, type ScheduleOptions, type SchedulerOptions } from './scheduler.js';
export { loadKeys, bearerChecker, type AuthSources } from './auth.js';
export { mediaRoot, resolveImage, resolveLocalPath, RequestError, type MediaPolicy } from './media.js';
