// @ts-check
// The Redis Cluster hash slot of a key: CRC16 (XMODEM) of the key, or of
// its {hash tag} when it has a non-empty one, modulo 16384.

/** CRC16-CCITT (XMODEM) of BUF. */
function crc16(/** @type {Buffer} */ buf) {
  let crc = 0;
  for (const b of buf) {
    crc ^= b << 8;
    for (let i = 0; i < 8; i++) crc = crc & 0x8000 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff;
  }
  return crc;
}

/** The slot of KEY. */
export function redisSlot(/** @type {string} */ key) {
  const open = key.indexOf('{');
  if (open >= 0) {
    const close = key.indexOf('}', open + 1);
    if (close > open + 1) key = key.slice(open + 1, close);
  }
  return crc16(Buffer.from(key)) % 16384;
}
