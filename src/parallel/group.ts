/**
 * Joining a data-parallel group from inside a rank process (started by `launchRanks`): the rank, the
 * group size and the rendezvous folder come from the environment (SSD_RANK, SSD_WORLD_SIZE,
 * SSD_RENDEZVOUS). The backend's own collective is used where it has one (cuda: NCCL), else the host
 * collective; SSD_COLLECTIVE=host forces the latter.
 */
import type { Backend, Collective } from '../backend/contract.js';
import { HostCollective } from './host-collective.js';
import { FileRendezvous } from './rendezvous.js';

/** Where this process stands in a data-parallel run. */
export interface RankInfo {
  rank: number;
  size: number;
  /** The rendezvous folder shared by the ranks. */
  dir: string;
}

/**
 * This process's rank, or null when it was not started as a rank (no SSD_RANK).
 * @throws Error on SSD_RANK / SSD_WORLD_SIZE that are not integers with 0 ≤ rank < size, or a missing SSD_RENDEZVOUS
 */
export function rankFromEnv(env: NodeJS.ProcessEnv = process.env): RankInfo | null {
  if (env['SSD_RANK'] === undefined) return null;
  const rank = Number(env['SSD_RANK']), size = Number(env['SSD_WORLD_SIZE']), dir = env['SSD_RENDEZVOUS'];
  if (!Number.isInteger(rank) || !Number.isInteger(size) || rank < 0 || rank >= size) {
    throw new Error(`SSD_RANK='${env['SSD_RANK']}' and SSD_WORLD_SIZE='${env['SSD_WORLD_SIZE']}' must be integers with 0 <= rank < size ` +
      '(they are set by ssd train --world-size N)');
  }
  if (!dir) throw new Error('SSD_RENDEZVOUS is not set (it is set by ssd train --world-size N)');
  return { rank, size, dir };
}

/**
 * Joins the group: blocks until every rank has joined (NCCL) or returns at once (host files).
 * @throws Error naming what is missing (e.g. NCCL) or an unknown SSD_COLLECTIVE
 */
export function joinGroup(backend: Backend, r: RankInfo): Collective {
  const rdzv = new FileRendezvous(r.dir, r.rank);
  const kind = process.env['SSD_COLLECTIVE'] ?? 'auto';
  if (!['auto', 'host'].includes(kind)) throw new Error(`unknown SSD_COLLECTIVE '${kind}' (auto, host)`);
  if (kind === 'auto' && backend.joinCollective) {
    return backend.joinCollective(r.rank, r.size, (id) => {
      if (id) {
        rdzv.put('collective-id', id);
        return id;
      }
      return new Uint8Array(rdzv.get('collective-id', "rank 0's communicator id"));
    });
  }
  return new HostCollective(backend, r.rank, r.size, rdzv);
}
