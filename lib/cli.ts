#!/usr/bin/env node
/**
 * The `emollm` command line.
 *   emollm info                  CPU features and the kernel paths in use
 *   emollm inspect <file|dir>    header of a GGUF file, safetensors file or HF model folder
 */
import { stat } from 'node:fs/promises';
import { join } from 'node:path';

import { EmollmError } from './errors.js';
import { cpuInfo } from './kernels.js';
import { native } from './native.js';

const USAGE = `usage: emollm <command>

commands:
  info                   CPU features, instruction-set level and threads the kernels use
  inspect <path>         tensors and metadata of a .gguf, a .safetensors, or a model folder
                         (config.json + model.safetensors[.index.json])
options:
  --json                 machine-readable output
  -h, --help             this help`;

interface TensorRow {
  name: string;
  dtype: string;
  shape: number[];
  nbytes: number;
}

function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

async function inspect(path: string, json: boolean): Promise<void> {
  const st = await stat(path).catch((cause: unknown) => {
    throw new EmollmError('ERR_FILE_NOT_FOUND', `${path}: no such file or folder`, { file: path, cause });
  });
  const b = native();
  let header: { tensors?: TensorRow[] } & Record<string, unknown>;
  let config: unknown;
  if (st.isDirectory()) {
    config = await b.readConfig(join(path, 'config.json')).catch(() => undefined);
    header = (await b.inspectSafetensors(path)) as typeof header;
  } else if (path.endsWith('.gguf')) {
    header = (await b.inspectGguf(path)) as typeof header;
  } else {
    header = (await b.inspectSafetensors(path)) as typeof header;
  }
  if (json) {
    console.log(JSON.stringify({ config, ...header }, null, 2));
    return;
  }
  const tensors = header.tensors ?? [];
  const total = tensors.reduce((s, t) => s + t.nbytes, 0);
  console.log(`${path}: ${tensors.length} tensors, ${formatBytes(total)}`);
  if (config && typeof config === 'object') console.log(`config: ${JSON.stringify(config)}`);
  for (const t of tensors.slice(0, 40)) console.log(`  ${t.name.padEnd(48)} ${t.dtype.padEnd(6)} [${t.shape.join(', ')}]`);
  if (tensors.length > 40) console.log(`  ... ${tensors.length - 40} more (--json lists all)`);
}

async function main(argv: string[]): Promise<number> {
  const json = argv.includes('--json');
  const args = argv.filter((a) => a !== '--json');
  const [cmd, ...rest] = args;
  if (!cmd || cmd === '-h' || cmd === '--help') {
    console.log(USAGE);
    return cmd ? 0 : 1;
  }
  switch (cmd) {
    case 'info': {
      const info = cpuInfo();
      if (json) console.log(JSON.stringify(info, null, 2));
      else {
        const on = Object.entries(info.features).filter(([, v]) => v).map(([k]) => k);
        console.log(`cpu:      ${info.brand}`);
        console.log(`cores:    ${info.physicalCores} physical, ${info.logicalCpus} logical; kernels use ${info.threads} threads`);
        console.log(`kernels:  ${info.isaActive} (best supported: ${info.isaDetected})`);
        console.log(`features: ${on.join(' ')}`);
      }
      return 0;
    }
    case 'inspect': {
      if (!rest[0]) throw new EmollmError('ERR_INVALID_ARGUMENT', 'inspect needs a path');
      await inspect(rest[0], json);
      return 0;
    }
    default:
      console.error(`emollm: unknown command "${cmd}"\n\n${USAGE}`);
      return 2;
  }
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e: unknown) => {
    if (e instanceof EmollmError) console.error(`emollm: ${e.message} [${e.code}]`);
    else console.error(e);
    process.exit(1);
  },
);
