// paths.mjs - where the repository, the test PKI, the provider fixtures and
// the tollgate binary are. Everything is resolved from this file's location,
// so the suite runs from any working directory and any checkout path.
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));

/** The repository root (test/integration/lib -> ../../..). */
export const REPO = path.resolve(here, '..', '..', '..');

/** The test PKI: ca.crt, server.{crt,key}, wronghost.{crt,key}, selfsigned.{crt,key}. */
export const TLS_DIR = path.join(REPO, 'test', 'data', 'tls');

/** The recorded provider wire fixtures (<repo>/../shared/fixtures/providers). */
export const FIXTURES = process.env.TG_FIXTURES
  ? path.join(path.resolve(process.env.TG_FIXTURES), 'providers')
  : path.resolve(REPO, '..', 'shared', 'fixtures', 'providers');

/** The daemon under test: $TOLLGATE_BIN, else <repo>/build/tollgate. */
export const TOLLGATE_BIN = process.env.TOLLGATE_BIN
  ? path.resolve(process.env.TOLLGATE_BIN)
  : path.join(REPO, 'build', 'tollgate');
