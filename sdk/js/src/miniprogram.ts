/*
 * Mini-program adapter: wx.connectSocket / wx.request (and the same API
 * under other names: my., tt., swan.) as a Transport, and wx storage as
 * the cursor store.
 *
 *   import { MboxClient } from 'mbox-client';
 *   import { wxTransport, wxStorage } from 'mbox-client/miniprogram';
 *   new MboxClient({ ..., transport: wxTransport(wx), storage: wxStorage(wx) });
 */
import type { HttpResponse, Transport } from './transport.js';
import type { StorageLike } from './storage.js';

/** The part of a SocketTask this adapter uses. */
export interface WxSocketTask {
  send(o: { data: string; fail?: (e: unknown) => void }): void;
  close(o: { code?: number; reason?: string }): void;
  onOpen(cb: (res: unknown) => void): void;
  onMessage(cb: (res: { data: unknown }) => void): void;
  onClose(cb: (res: { code?: number; reason?: string }) => void): void;
  onError(cb: (res: { errMsg?: string }) => void): void;
}

/** The part of the wx global this adapter uses. */
export interface WxLike {
  connectSocket(o: { url: string; fail?: (e: { errMsg?: string }) => void }): WxSocketTask;
  request(o: {
    url: string;
    method: string;
    header: Record<string, string>;
    data?: string;
    dataType: string;
    responseType: string;
    success(res: { statusCode: number; data: unknown }): void;
    fail(err: { errMsg?: string }): void;
  }): unknown;
  getStorageSync?(key: string): unknown;
  setStorageSync?(key: string, value: string): void;
}

/** A Transport over wx.connectSocket and wx.request. */
export function wxTransport(wx: WxLike): Transport {
  return {
    connect(url, h) {
      let closed = false;
      const gone = (code: number, reason: string) => {
        if (closed) return;
        closed = true;
        h.onClose(code, reason);
      };
      const task = wx.connectSocket({
        url,
        fail: (e) => {
          h.onError(new Error(e?.errMsg || 'connectSocket failed'));
          gone(1006, e?.errMsg || 'connectSocket failed');
        },
      });
      task.onOpen(() => h.onOpen());
      task.onMessage((res) => {
        if (typeof res.data === 'string') h.onMessage(res.data);
        else h.onError(new Error('binary frame on a JSON session'));
      });
      // Some platforms report a failed connection by onError alone.
      task.onError((res) => {
        h.onError(new Error(res?.errMsg || 'socket error'));
        gone(1006, res?.errMsg || 'socket error');
      });
      task.onClose((res) => gone(res?.code ?? 1006, res?.reason ?? ''));
      return {
        send: (text) => task.send({ data: text }),
        close: (code, reason) => task.close({ code: code ?? 1000, reason: reason ?? '' }),
      };
    },
    request(req) {
      return new Promise<HttpResponse>((resolve, reject) => {
        wx.request({
          url: req.url,
          method: req.method,
          header: req.headers,
          data: req.body,
          dataType: 'text', // anything but 'json': the client parses (64-bit ids stay strings)
          responseType: 'text',
          success: (res) => resolve({
            status: res.statusCode,
            text: typeof res.data === 'string' ? res.data : res.data == null ? '' : JSON.stringify(res.data),
          }),
          fail: (err) => reject(new Error(err?.errMsg || 'request failed')),
        });
      });
    },
  };
}

/** The cursor store over wx.getStorageSync / wx.setStorageSync. */
export function wxStorage(wx: WxLike): StorageLike {
  return {
    get: (key) => {
      const v = wx.getStorageSync?.(key);
      return typeof v === 'string' && v !== '' ? v : null;
    },
    set: (key, value) => wx.setStorageSync?.(key, value),
  };
}
