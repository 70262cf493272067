// A Hugging Face hub stand-in on 127.0.0.1 that answers the endpoints emollm's pull uses, the
// way huggingface.co answers them:
//   GET  /api/models/<owner>/<name>/revision/<rev>      model info with `sha` (the commit)
//   GET  /api/models/<owner>/<name>/tree/<commit>?recursive=true   the file list, paginated with a Link header
//   GET  /<owner>/<name>/resolve/<commit>/<path>        the file: small ones directly (with an ETag),
//        LFS ones by a 302 to a "CDN" path that honours Range (206 + Content-Range)
// Private repositories answer 401 without `Authorization: Bearer <token>`. Hooks let a test break a
// transfer part-way or corrupt bytes; every request is logged.
import { createHash } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface FakeFile {
  path: string;
  data: Buffer;
  /** Stored with Git LFS (listed with lfs.oid = sha256); else a plain git blob (oid = git sha1). */
  lfs: boolean;
}

export interface FakeRepo {
  id: string;
  commit: string;
  refs: Record<string, string>;
  files: FakeFile[];
  token?: string;
}

export interface RequestLog {
  method: string;
  url: string;
  range: string | undefined;
  auth: string | undefined;
}

export interface FakeHub {
  url: string;
  log: RequestLog[];
  /** Ends the response for this path after this many bytes (once), like a dropped connection. */
  breakAfter: Map<string, number>;
  /** Serves these bytes instead of the real ones for this path. */
  corrupt: Map<string, Buffer>;
  close(): Promise<void>;
}

export const gitBlobSha1 = (data: Buffer): string => createHash('sha1').update(`blob ${data.length}\0`).update(data).digest('hex');
export const sha256 = (data: Buffer): string => createHash('sha256').update(data).digest('hex');

export async function startFakeHub(repos: FakeRepo[]): Promise<FakeHub> {
  const log: RequestLog[] = [];
  const breakAfter = new Map<string, number>();
  const corrupt = new Map<string, Buffer>();
  const json = (res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void => {
    res.writeHead(status, { 'Content-Type': 'application/json', ...headers });
    res.end(JSON.stringify(body));
  };
  const authorised = (repo: FakeRepo, req: IncomingMessage): boolean => !repo.token || req.headers.authorization === `Bearer ${repo.token}`;
  const find = (owner: string, name: string): FakeRepo | undefined => repos.find((r) => r.id === `${owner}/${name}`);

  const sendBytes = (req: IncomingMessage, res: ServerResponse, file: FakeFile): void => {
    const data = corrupt.get(file.path) ?? file.data;
    const m = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
    let start = 0;
    let end = data.length - 1;
    let status = 200;
    const headers: Record<string, string> = { 'Content-Type': 'application/octet-stream', 'Accept-Ranges': 'bytes' };
    if (m) {
      start = Number(m[1]);
      if (m[2]) end = Math.min(end, Number(m[2]));
      if (start >= data.length) {
        res.writeHead(416, { 'Content-Range': `bytes */${data.length}` });
        res.end();
        return;
      }
      status = 206;
      headers['Content-Range'] = `bytes ${start}-${end}/${data.length}`;
    }
    headers['Content-Length'] = String(end - start + 1);
    res.writeHead(status, headers);
    const body = data.subarray(start, end + 1);
    const cut = breakAfter.get(file.path);
    if (cut !== undefined && req.method !== 'HEAD') {
      breakAfter.delete(file.path);
      // Trickle the bytes before the break, as a connection that drops mid-transfer does.
      let sent = 0;
      const step = (): void => {
        if (sent >= cut) return void res.destroy();
        const n = Math.min(16_384, cut - sent);
        res.write(body.subarray(sent, sent + n), () => setTimeout(step, 5));
        sent += n;
      };
      step();
      return;
    }
    res.end(req.method === 'HEAD' ? undefined : body);
  };

  const server: Server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://127.0.0.1');
    log.push({ method: req.method ?? 'GET', url: url.pathname + url.search, range: req.headers.range, auth: req.headers.authorization });
    const p = url.pathname.split('/').map(decodeURIComponent);
    // /api/models/<owner>/<name>/revision/<rev>
    if (p[1] === 'api' && p[2] === 'models' && p[5] === 'revision') {
      const repo = find(p[3]!, p[4]!);
      if (!repo) return json(res, 404, { error: 'Repository not found' });
      if (!authorised(repo, req)) return json(res, 401, { error: 'Invalid credentials in Authorization header' });
      const rev = p.slice(6).join('/');
      const sha = rev === repo.commit ? rev : repo.refs[rev];
      if (!sha) return json(res, 404, { error: `Invalid rev id: ${rev}` });
      return json(res, 200, {
        _id: 'x'.repeat(24), id: repo.id, sha, private: !!repo.token, gated: false, downloads: 0, likes: 0,
        lastModified: '2024-01-01T00:00:00.000Z', siblings: repo.files.map((f) => ({ rfilename: f.path })),
      });
    }
    // /api/models/<owner>/<name>/tree/<commit>[?cursor=N]
    if (p[1] === 'api' && p[2] === 'models' && p[5] === 'tree') {
      const repo = find(p[3]!, p[4]!);
      if (!repo) return json(res, 404, { error: 'Repository not found' });
      if (!authorised(repo, req)) return json(res, 401, { error: 'Invalid credentials in Authorization header' });
      if (p[6] !== repo.commit) return json(res, 404, { error: 'Revision not found' });
      const items = repo.files.map((f) => ({
        type: 'file', path: f.path, size: f.lfs ? 134 : f.data.length,
        oid: f.lfs ? gitBlobSha1(Buffer.from(`version https://git-lfs.github.com/spec/v1\noid sha256:${sha256(f.data)}\nsize ${f.data.length}\n`)) : gitBlobSha1(f.data),
        ...(f.lfs ? { lfs: { oid: sha256(f.data), size: f.data.length, pointerSize: 134 } } : {}),
      }));
      // Two per page, as the hub pages long listings.
      const cursor = Number(url.searchParams.get('cursor') ?? 0);
      const next = cursor + 2 < items.length ? `<http://${req.headers.host}${url.pathname}?recursive=true&expand=false&cursor=${cursor + 2}>; rel="next"` : undefined;
      return json(res, 200, items.slice(cursor, cursor + 2), next ? { Link: next } : {});
    }
    // /<owner>/<name>/resolve/<commit>/<path>
    if (p[3] === 'resolve') {
      const repo = find(p[1]!, p[2]!);
      if (!repo) return json(res, 404, { error: 'Repository not found' });
      if (!authorised(repo, req)) return json(res, 401, { error: 'Invalid credentials' });
      const path = p.slice(5).join('/');
      const file = repo.files.find((f) => f.path === path);
      if (p[4] !== repo.commit || !file) return json(res, 404, { error: 'Entry not found' });
      if (file.lfs) {
        res.writeHead(302, { Location: `/cdn/${repo.id}/${sha256(file.data)}`, 'X-Linked-Size': String(file.data.length), 'X-Linked-Etag': `"${sha256(file.data)}"` });
        return res.end();
      }
      return sendBytes(req, res, file);
    }
    // The "CDN" an LFS resolve redirects to.
    if (p[1] === 'cdn') {
      const repo = find(p[2]!, p[3]!);
      const file = repo?.files.find((f) => f.lfs && sha256(f.data) === p[4]);
      if (!file) return json(res, 404, { error: 'not found' });
      return sendBytes(req, res, file);
    }
    json(res, 404, { error: 'not found' });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    log,
    breakAfter,
    corrupt,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}
