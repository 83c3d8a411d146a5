"""relbias: every head through dense attention plus a relative-position bias (ALiBi, T5 buckets, a table).

The bias is added to whatever the site already has (its mask, causality, key
padding). The pass turns the parameters into the op's per-head slopes and
table for the site's head count; a site whose head count is unknown, or that
does not match a table file's, is refused with the reason.

kind=fuse instead takes over the bias the model already adds: mask analysis
recognised it (``AttentionSite.relative_bias``) and read it as slopes and a
table, so the op call gets those and says it fuses the bias (``OpCall.fuses``);
the frontend then leaves that term out of the dense remainder.
"""

import dataclasses

from attnopt.errors import InvalidParamsError

from .base import AttentionPass, OpCall, Refusal
from .registry import register


@register
class RelbiasPass(AttentionPass):
    variant = "relbias"

    @classmethod
    def parse_params(cls, params: dict):
        from attnopt.kernels.relbias import check_params, load_table

        parsed = cls.spec().parse_params(params)
        problem = check_params(parsed)
        if problem:
            raise InvalidParamsError(f"relbias: {problem}")
        if parsed["table_file"]:
            try:  # read once here, so a bad file is a parameter error, not a failure per site
                load_table(parsed["table_file"], parsed["num_buckets"])
            except ValueError as e:
                raise InvalidParamsError(f"relbias: {e}") from None
        return cls.Params(**parsed)

    def plan_site(self, site):
        from attnopt.kernels.relbias import FUSE

        if self.params.kind == FUSE:
            if site.relative_bias is None:
                return Refusal(site, "its mask is not a relative-position bias: kind fuse has nothing to fuse")
            return OpCall.fusing_relative_bias(site, self.variant, dataclasses.asdict(self.params))
        if not isinstance(site.num_heads, int):
            return Refusal(site, "the head count is unknown: relbias needs it for its per-head slopes or table")
        params = dataclasses.asdict(self.params)
        try:
            tensors = self.spec().tensors_for(params, (1, site.num_heads, 1, 1), (1, site.kv_num_heads, 1, 1))
        except ValueError as e:  # a table file made for another head count
            return Refusal(site, str(e))
        return OpCall.whole(site, self.variant, params, tensors)
