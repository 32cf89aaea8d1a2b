// Preloaded into the Portkey gateway by test/bench/proof.sh
// (node --import ./loopback.mjs ...): its start-server.js listens on every
// interface and has no option for the address, so every listen() without a
// host is pinned to 127.0.0.1 here. The benchmark stays on the loopback.
import net from 'node:net';

const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === 'number' || (typeof args[0] === 'string' && /^\d+$/.test(args[0]))) {
    const [port, ...rest] = args;
    if (typeof rest[0] !== 'string') return listen.call(this, Number(port), '127.0.0.1', ...rest);
  } else if (args[0] && typeof args[0] === 'object' && args[0].port !== undefined && !args[0].host && !args[0].path) {
    return listen.call(this, { ...args[0], host: '127.0.0.1' }, ...args.slice(1));
  }
  return listen.apply(this, args);
};
