/*
 * Transports: how the client reaches the two listeners. The client only
 * needs "open a text WebSocket" and "make one HTTP request"; browsers and
 * Node supply both (WebSocket + fetch), mini programs supply them through
 * wx.connectSocket / wx.request (miniprogram.ts).
 */

/** Callbacks a transport calls for one socket. */
export interface SocketHandlers {
  onOpen(): void;
  /** One text message (a JSON frame). */
  onMessage(text: string): void;
  /** The socket is gone (after an error too); code 1006 when the peer vanished. */
  onClose(code: number, reason: string): void;
  onError(err: unknown): void;
}

/** An open (or opening) socket. */
export interface TransportSocket {
  send(text: string): void;
  close(code?: number, reason?: string): void;
}

export interface HttpRequest {
  method: 'GET' | 'POST';
  url: string;
  headers: Record<string, string>;
  body?: string;
}

export interface HttpResponse {
  status: number;
  /** The body as text ("" for 204). */
  text: string;
}

/** What MboxClient needs from the platform. */
export interface Transport {
  connect(url: string, handlers: SocketHandlers): TransportSocket;
  request(req: HttpRequest): Promise<HttpResponse>;
}

/** The browser-style WebSocket constructor (the ws package's is compatible). */
export interface WebSocketLike {
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketCtor = new (url: string) => WebSocketLike;
export type FetchLike = (url: string, init: {
  method: string;
  headers: Record<string, string>;
  body?: string;
}) => Promise<{ status: number; text(): Promise<string> }>;

/** A transport over a WebSocket constructor and a fetch function. */
export function webTransport(WS: WebSocketCtor, fetchFn: FetchLike): Transport {
  return {
    connect(url, h) {
      const ws = new WS(url);
      ws.onopen = () => h.onOpen();
      ws.onmessage = (ev) => {
        if (typeof ev.data === 'string') h.onMessage(ev.data);
        else h.onError(new Error('binary frame on a JSON session'));
      };
      ws.onclose = (ev) => h.onClose(ev.code, ev.reason);
      ws.onerror = (ev) => h.onError(ev);
      return {
        send: (text) => ws.send(text),
        close: (code, reason) => ws.close(code, reason),
      };
    },
    async request(req) {
      const r = await fetchFn(req.url, { method: req.method, headers: req.headers, body: req.body });
      return { status: r.status, text: await r.text() };
    },
  };
}
