// A real release controller for one test file: fresh SQLite database in a
// temporary directory, a free port on 127.0.0.1, a short poll interval, and
// stop/restart on the same port and database (for the reconnecting test).
import { spawn, ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';

const ROOT = path.resolve(__dirname, '..', '..');
const ADMIN_KEY = 'e2e-admin-key-0123456789abcdef';

/// A free TCP port on the loopback interface.
async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

export interface ControllerOptions {
  /// Binary to run; defaults to FREEAGENT_BIN or target/release/freeagent.
  bin?: string;
  /// `--poll-interval` of the page, e.g. `1s`.
  pollInterval?: string;
}

export class Controller {
  readonly adminKey = ADMIN_KEY;
  url = '';
  private port = 0;
  private dir = '';
  private proc?: ChildProcess;
  private log: string[] = [];

  private constructor(private readonly bin: string, readonly pollMs: number, private readonly pollInterval: string) {}

  static async start(options: ControllerOptions = {}): Promise<Controller> {
    const bin = options.bin ?? process.env.FREEAGENT_BIN ?? path.join(ROOT, 'target', 'release', 'freeagent');
    const pollInterval = options.pollInterval ?? '1s';
    const pollMs = parseDuration(pollInterval);
    const ctl = new Controller(bin, pollMs, pollInterval);
    ctl.port = await freePort();
    ctl.url = `http://127.0.0.1:${ctl.port}`;
    ctl.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'freeagent-e2e-'));
    await ctl.launch();
    return ctl;
  }

  /// Starts the server process (again) and waits until /healthz answers.
  async launch(): Promise<void> {
    const siteRoot = path.resolve(ROOT, process.env.LEPTOS_SITE_ROOT ?? 'target/site');
    const args = [
      'serve',
      '--database-url', `sqlite://${path.join(this.dir, 'freeagent.db')}`,
      '--listen', `127.0.0.1:${this.port}`,
      '--admin-key', ADMIN_KEY,
      '--poll-interval', this.pollInterval,
      '--stats-ttl', '0s',
    ];
    const proc = spawn(this.bin, args, {
      cwd: this.dir,
      env: {
        ...process.env,
        LEPTOS_SITE_ROOT: siteRoot,
        LEPTOS_SITE_ADDR: `127.0.0.1:${this.port}`,
        RUST_LOG: process.env.RUST_LOG ?? 'warn',
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.proc = proc;
    const keep = (chunk: Buffer) => {
      this.log.push(chunk.toString());
      if (this.log.length > 200) this.log.shift();
    };
    proc.stdout?.on('data', keep);
    proc.stderr?.on('data', keep);
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline) {
      if (proc.exitCode !== null) {
        throw new Error(`controller exited with ${proc.exitCode}:\n${this.log.join('')}`);
      }
      try {
        const res = await fetch(`${this.url}/healthz`);
        if (res.ok) return;
      } catch {
        // not listening yet
      }
      await sleep(100);
    }
    throw new Error(`controller did not become healthy:\n${this.log.join('')}`);
  }

  /// Stops the server process (SIGTERM, then SIGKILL after 10 s).
  async stop(): Promise<void> {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
    proc.kill('SIGTERM');
    const timer = setTimeout(() => proc.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(timer);
  }

  /// Stops the server and removes its database.
  async dispose(): Promise<void> {
    await this.stop();
    fs.rmSync(this.dir, { recursive: true, force: true });
  }

  /// A JSON request to the REST API; throws on a status other than `expect`.
  async api(method: string, route: string, token?: string, body?: unknown, expect?: number[]): Promise<any> {
    const headers: Record<string, string> = {};
    if (token) headers.authorization = `Bearer ${token}`;
    if (body !== undefined) headers['content-type'] = 'application/json';
    const res = await fetch(`${this.url}${route}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    if (expect ? !expect.includes(res.status) : !res.ok) {
      throw new Error(`${method} ${route} answered ${res.status}: ${text}`);
    }
    return text ? JSON.parse(text) : null;
  }

  /// Figures as GET /api/stats returns them.
  async stats(): Promise<Stats> {
    return this.api('GET', '/api/stats');
  }
}

/// NetworkStats as JSON (SPEC "The statistics, exactly").
export interface Stats {
  nodesOnline: number;
  buildsQueued: number;
  activeBuilds: number;
  buildsToday: number;
  totalBuilds: number;
  totalBuildTimeMs: number;
  totalCpuSeconds: number;
  cpuCoresBusy: number;
  /// Median and 95th percentile of the queue wait, ms; null with no build
  /// first assigned in the last 24 h.
  queueWaitP50Ms: number | null;
  queueWaitP95Ms: number | null;
  generatedAt: number;
  demo: boolean;
}

/// A registered worker that can run builds through the REST API.
export class Worker {
  private seq = 0;
  private constructor(private readonly ctl: Controller, readonly token: string) {}

  static async register(ctl: Controller, name = 'e2e-worker'): Promise<Worker> {
    const answer = await ctl.api('POST', '/api/workers/register', ctl.adminKey, {
      name,
      platforms: ['linux'],
      cpuCores: 16,
      memoryMb: 32768,
    });
    return new Worker(ctl, answer.token);
  }

  /// Submits a build, then claims and starts the oldest pending one (the
  /// queue length stays as it was); returns the started build's id.
  async startBuild(): Promise<number> {
    await this.ctl.api('POST', '/api/builds', this.ctl.adminKey, { platform: 'linux', label: 'e2e' });
    const claimed = await this.ctl.api('POST', '/api/workers/poll', this.token);
    await this.ctl.api('POST', `/api/builds/${claimed.build.id}/start`, this.token);
    return claimed.build.id;
  }

  /// Posts `samples` samples of `cpuPercent` over 300 s each.
  async telemetry(id: number, samples: number, cpuPercent = 1600): Promise<void> {
    const now = Date.now();
    const snapshots = Array.from({ length: samples }, () => ({
      seq: ++this.seq,
      sampledAt: now,
      cpuPercent,
      memoryMb: 2048,
      intervalS: 300,
    }));
    await this.ctl.api('POST', `/api/builds/${id}/telemetry`, this.token, { snapshots });
  }

  async complete(id: number, success = true): Promise<void> {
    await this.ctl.api('POST', `/api/builds/${id}/complete`, this.token, { success });
  }

  /// A whole build: submit, claim, start, telemetry, complete.
  async runBuild(samples = 10): Promise<number> {
    const id = await this.startBuild();
    await this.telemetry(id, samples);
    await this.complete(id);
    return id;
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function parseDuration(text: string): number {
  const m = /^(\d+)(ms|s|m)$/.exec(text);
  if (!m) throw new Error(`bad duration ${text}`);
  const n = Number(m[1]);
  return m[2] === 'ms' ? n : m[2] === 's' ? n * 1000 : n * 60_000;
}
