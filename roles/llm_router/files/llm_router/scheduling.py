# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Swap scheduling, a part of the Switchboard (lifecycle.py): when a swap may close the backends it
must drain (min_residency), and the systemd start limit a swap clears (docs/router.md, "Swap scheduling").

- A backend a swap made ready serves its own requests for min_residency seconds before another swap
  closes it: the swap that needs it closed waits that long (its requests with it), while requests for
  the backend go on being served; unless the backend has had no request for IDLE_GRACE seconds
  (nobody is using it), which ends the wait. Then it closes the backend, drains it and swaps. So two models
  asked for in turn swap at most once per min_residency, and a request for either waits at most
  min_residency plus one drain and one swap.
- Every `systemctl start` counts against the unit's StartLimitBurst (in StartLimitIntervalSec) while
  systemd keeps the unit loaded (enabled, or failed): swaps faster than that leave it "failed" and
  every later start refused until the interval has passed (Result=start-limit-hit, or the result of
  a failed stop, which systemd keeps). A start refused while the unit is failed is cleared
  (`systemctl reset-failed`) and tried once more, unless the router's last start of that unit failed
  (failures in a row > 0): a unit that really fails keeps systemd's limit and the router's back-off.
"""

import asyncio
import logging
import time

log = logging.getLogger('llm_router')

IDLE_GRACE = 1.0        # seconds without a request after which a backend in its residency is closed anyway


class Scheduling:
    """Mixin of lifecycle.Switchboard (self.cfg, self._systemctl)."""

    unit_error = Exception               # what _systemctl raises: lifecycle.SwapError (lifecycle imports this module)

    def residency_left(self, backends):
        """Seconds until every ready backend of backends has been ready for min_residency seconds."""
        now = time.monotonic()
        return max([b.ready_since + self.cfg.min_residency - now for b in backends if b.state == 'ready'] + [0.0])

    async def wait_residency(self, swap):
        """Before it closes anything: wait until the backends the swap must close have served their
        min_residency (they serve meanwhile), or have had no request for IDLE_GRACE seconds (nobody is
        using them: a lone user's next model, the role's proof requests one after the other), then
        close them (new requests for them wait for the swap)."""
        backends = [self.cfg.backends[n] for n in swap.closing]
        deadline = time.monotonic() + self.residency_left(backends)
        if deadline > time.monotonic():
            log.info('swap to model %s waits up to %.1f s: %s keep(s) serving for min_residency %g s, '
                     'unless idle for %g s', swap.model.name, deadline - time.monotonic(),
                     ', '.join(sorted(swap.closing)), self.cfg.min_residency, IDLE_GRACE)
        while backends:
            now = time.monotonic()
            quiet = -1.0 if any(b.inflight for b in backends) else min(now - b.last_used for b in backends)
            if now >= deadline or quiet >= IDLE_GRACE:
                break
            await asyncio.sleep(min(deadline - now, IDLE_GRACE - quiet if quiet >= 0 else 0.1))
        swap.waiting, swap.closed = False, swap.closing

    async def start_unit(self, b):
        """systemctl start; a start limit the router's own swaps ran the unit into is cleared once."""
        try:
            await self._systemctl('start', b)
            return
        except self.unit_error as e:
            if b.failures or e.unit_props.get('ActiveState') != 'failed':
                raise
            why = e.message
        log.warning('unit %s of backend %s was refused a start while failed (a start limit its swaps hit shows '
                    'so): systemctl reset-failed, then start once more; %s', b.unit, b.name, why)
        await self._systemctl('reset-failed', b)
        await self._systemctl('start', b)
