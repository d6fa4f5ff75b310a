/* mbox-client: the JavaScript SDK of the mailbox service (docs/client.md). */
export { MboxClient, MboxError } from './client.js';
export type { MboxClientOptions, MboxItem, MboxState } from './client.js';
export { backoffDelay } from './backoff.js';
export type { BackoffOptions } from './backoff.js';
export { memoryStorage } from './storage.js';
export type { StorageLike } from './storage.js';
export { webTransport } from './transport.js';
export type {
  FetchLike, HttpRequest, HttpResponse, SocketHandlers, Transport, TransportSocket, WebSocketCtor, WebSocketLike,
} from './transport.js';
export { wxTransport, wxStorage } from './miniprogram.js';
export type { WxLike, WxSocketTask } from './miniprogram.js';
