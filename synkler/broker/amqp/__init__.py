"""RabbitMQ through pika: the only package that imports pika.

Topology of an instance `id` (':' cannot occur in an id or an agent name, so no name of one
object can be the name of another, of this instance or of any other):
- exchange ``synkler:<id>`` (topic, durable): every message, routed by the receiving agent's name;
- queue ``synkler:<id>:inbox:<agent>`` (a quorum queue, one per agent: synkler.broker.topology has
  the arguments of every queue) bound with routing key ``<agent>``, so a message sent while that
  agent is down waits for it. Its agent consumes it alone: it first declares its exclusive lock
  queue ``synkler:<id>:lock:<agent>``, which the broker refuses to a second connection
  (AgentActive: that agent waits as a standby);
- exchange ``synkler:<id>:presence`` (topic) and queue ``synkler:<id>:holder:<agent>`` (quorum,
  at most one message) bound with routing key ``<agent>``: who consumes the agent's queue (host,
  pid, since when), so that the refused one can name it; the agent's presence report
  (synkler.observe.presence) replaces it every few seconds, a superset of it, which `synkler status
  --relay` reads. A topic exchange so that the broker's topic permissions (broker-setup) let each
  agent's user write only its own report; with `authenticate` a reader also believes a report only
  from its agent's user (`user_id`). (The direct exchange ``synkler:<id>:holder`` of earlier
  versions is no longer used.);
- exchange and queue ``synkler:<id>:dead`` (quorum): where rejected (malformed, hostile) messages
  end up, bounded in count and bytes.

The broker may be a cluster (synkler.broker.connect): `connect` tries its nodes in turn.

The instance's exchanges and dead-letter queue are shared: whoever may declares them (central's
user under broker-setup, any user on a broker without per-agent users); a user that may not (an
upload or download agent's) only checks that they exist, so that no agent login can delete,
re-declare or re-type what the others rely on.
synkler 0.4 named them ``synkler.<id>``, ``synkler.<id>.<agent>`` and ``synkler.<id>.dead``; an agent
moves what its old queue still holds into its new one when it connects (`_adopt_legacy`). That
shim (`legacy_queue_name`, `_adopt_legacy`) is removed in synkler 0.7: a relay upgraded from 0.4
starts a 0.5 or 0.6 agent once first (docs/upgrading.md). synkler 0.5 named an agent's queue
``synkler:<id>:agent:<agent>``, a classic queue: the agent consumes what it still holds and deletes
it once empty (`_drain_classic`, removed in synkler 0.8).

The connection has two channels: one consumes (and acks), one publishes with confirms. A publish
the broker refuses (a queue declared by someone else with other arguments, a queue that rejects
messages) closes only the publishing channel and raises PublishRefused, so the caller can hold back
that destination and go on with the others; the consumer is not disturbed.

pika's BlockingConnection is not thread-safe: the agent's main loop owns it. Other threads may only
call `wake()`. pika errors are re-raised as BrokerError so no other module sees a pika object.

`Broker` (broker.py: connecting, consuming, publishing) is made of one part per concern, each a
class it inherits: `Channels` (base.py: the channels and the state they share, pika's errors
turned into synkler's), `Declaring` (declare.py: the instance's objects), `Holding` (holder.py: the
lock, the exclusive consumer, who holds the queue), `Reading` (presence.py: presence reports and
the counts others read) and `Legacy` (legacy.py: the queues of earlier versions). words.py puts
pika's exceptions in words.
"""

from ..connect import BrokerParams, tls_settings
from ..topology import DEAD_ARGUMENTS
from .base import Delivery
from .broker import Broker
from .holder import TOKEN, Holder

__all__ = ["DEAD_ARGUMENTS", "TOKEN", "Broker", "BrokerParams", "Delivery", "Holder", "tls_settings"]
