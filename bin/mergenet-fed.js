#!/usr/bin/env node
// The package's executable. It registers tsx so the TypeScript sources run as they are, with no
// build step, then hands the arguments to cli/main.ts.
import { register } from 'tsx/esm/api';

register();
const { runCli } = await import('../cli/main.ts');
await runCli(process.argv);
