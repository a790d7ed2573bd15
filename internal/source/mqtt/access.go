package mqtt

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"strings"
	"sync"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/twinline/twinline/internal/auth"
)

// AuthenticateFunc verifies the credentials of a connecting client and
// returns the identity it acts as. username is the CONNECT user name (a
// token's name, free text), password the CONNECT password (the token);
// cert is the verified TLS client certificate of an MQTTS client that sent
// no password, nil otherwise. A client that sent nothing is asked about
// too (empty username and password, nil cert), so the function decides
// whether anonymous clients get in.
//
// An error wrapping auth.ErrNoCredentials, auth.ErrInvalidToken,
// auth.ErrExpired or auth.ErrRevoked refuses the client as bad
// credentials; any other error as the server being unavailable (the
// client tries again later).
type AuthenticateFunc func(ctx context.Context, username string, password []byte, cert *x509.Certificate) (auth.Identity, error)

// AuthorizeFunc decides whether id may write telemetry for machine (for
// example, refusing a machine the registry places at a site id does not
// see). It is called for every telemetry message before it is submitted;
// any error refuses the message.
type AuthorizeFunc func(ctx context.Context, id auth.Identity, machine string) error

// MQTT 5 CONNACK reason codes and their MQTT 3.1.1 return codes.
var (
	connBadCredentials = connRefusal{reason: "credentials", v5: packets.ErrBadUsernameOrPassword, v3: packets.ErrMalformedUsernameOrPassword}
	connNotAuthorized  = connRefusal{reason: "not_authorized", v5: packets.ErrNotAuthorized, v3: packets.Err3NotAuthorized}
	connUnavailable    = connRefusal{reason: "unavailable", v5: packets.ErrServerUnavailable, v3: packets.Err3ServerUnavailable}
)

// connRefusal is how a refused CONNECT is answered and counted.
type connRefusal struct {
	reason string
	v5, v3 packets.Code
}

// Refusal reasons, the reason label of twinline_mqtt_refused_total.
const (
	refusedPublish       = "publish"        // publish ACL
	refusedSubscribe     = "subscribe"      // subscribe ACL
	refusedRetainedTopic = "retained_topic" // retained message outside twinline/
	refusedRetainedQuota = "retained_quota" // over MaxRetained or MaxRetainedBytes
)

var allRefusals = []string{
	connBadCredentials.reason, connNotAuthorized.reason, connUnavailable.reason,
	refusedPublish, refusedSubscribe, refusedRetainedTopic, refusedRetainedQuota,
}

// connRefusalFor maps an Authenticate error to the CONNACK code.
func connRefusalFor(err error) connRefusal {
	for _, e := range []error{auth.ErrNoCredentials, auth.ErrInvalidToken, auth.ErrExpired, auth.ErrRevoked} {
		if errors.Is(err, e) {
			return connBadCredentials
		}
	}
	return connUnavailable
}

// peerCertificate returns the verified client certificate of a TLS
// connection, or nil. A certificate the TLS configuration did not verify
// (RequestClientCert, RequireAnyClientCert) is never returned.
func peerCertificate(conn any) *x509.Certificate {
	tc, ok := conn.(*tls.Conn)
	if !ok {
		return nil
	}
	st := tc.ConnectionState()
	if len(st.VerifiedChains) == 0 || len(st.PeerCertificates) == 0 {
		return nil
	}
	return st.PeerCertificates[0]
}

// mayPublish reports whether id may publish to topic: with the ingest
// scope, only under twinline/{site}/ of a site it sees, and for a device
// identity only where the machine id level is its machine. Nobody
// publishes where only the server does: a machine's desired documents
// and its commands (the responses to them are the device's).
func mayPublish(id auth.Identity, topic string) bool {
	if !id.Can(auth.ScopeIngest) {
		return false
	}
	parts := strings.Split(topic, "/")
	if len(parts) < 3 || parts[0] != "twinline" || parts[1] == "" || !id.SeesSite(parts[1]) {
		return false
	}
	if serverOwned(topic) {
		return false
	}
	return id.Machine == "" || len(parts) >= 4 && parts[3] == id.Machine
}

// maySubscribe reports whether id may subscribe to filter (or receive a
// message on the topic filter): with the read scope (and no machine of
// its own), an unrestricted identity anywhere ($SYS included), a
// restricted one only under twinline/{site} of its sites, the site level
// without wildcards. A shared subscription ($share/{group}/{filter}) is
// judged by its filter. Besides, an ingest identity may subscribe to the
// control topics of the machines it writes for (mayReceiveControl).
func maySubscribe(id auth.Identity, filter string) bool {
	if rest, ok := strings.CutPrefix(filter, "$share/"); ok {
		_, f, found := strings.Cut(rest, "/")
		if !found {
			return false
		}
		filter = f
	}
	if mayReceiveControl(id, filter) {
		return true
	}
	if !id.Can(auth.ScopeRead) || id.Machine != "" {
		return false
	}
	if !id.Restricted() {
		return true
	}
	parts := strings.Split(filter, "/")
	if len(parts) < 2 || parts[0] != "twinline" {
		return false
	}
	site := parts[1]
	return site != "+" && site != "#" && id.SeesSite(site)
}

// mayReceiveControl reports whether id, with the ingest scope, may
// subscribe to filter as a device (or a gateway) receiving twin control:
// twinline/{site}/{line}/{machine}/ followed by desired, desired/delta,
// desired/#, commands/#, commands/+ or commands/{cmdId}, where machine is
// the device identity's own (any, or +, for another ingest identity) and
// site a site the identity sees, or + (as line may be). A wildcard lets
// the filter through; each message is checked again by its topic on
// delivery, so another machine's or site's never reaches the client.
func mayReceiveControl(id auth.Identity, filter string) bool {
	if !id.Can(auth.ScopeIngest) {
		return false
	}
	parts := strings.Split(filter, "/")
	if len(parts) < 5 || parts[0] != "twinline" {
		return false
	}
	site, line, machine := parts[1], parts[2], parts[3]
	if site == "" || site == "#" || site != "+" && !id.SeesSite(site) {
		return false
	}
	if line == "" || line == "#" {
		return false
	}
	switch {
	case id.Machine != "":
		if machine != id.Machine {
			return false
		}
	case machine == "" || machine == "#":
		return false
	}
	switch rest := parts[4:]; {
	case len(rest) == 1:
		return rest[0] == leafDesired
	case len(rest) == 2 && rest[0] == leafDesired:
		return rest[1] == "delta" || rest[1] == "#"
	case len(rest) == 2 && rest[0] == leafCommands:
		return rest[1] != ""
	}
	return false
}

// identities keeps the verified identity of each client, by client id.
// The entry names the client it belongs to: a client taken over by a new
// connection with the same id has no identity any more.
type identities struct {
	mu sync.Mutex
	m  map[string]clientIdentity
}

type clientIdentity struct {
	cl *mochi.Client
	id auth.Identity
}

func (s *identities) set(cl *mochi.Client, id auth.Identity) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[string]clientIdentity{}
	}
	s.m[cl.ID] = clientIdentity{cl: cl, id: id}
}

func (s *identities) get(cl *mochi.Client) (auth.Identity, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.m[cl.ID]
	if !ok || e.cl != cl {
		return auth.Identity{}, false
	}
	return e.id, true
}

// drop forgets cl's identity, unless the client id now belongs to
// another connection.
func (s *identities) drop(cl *mochi.Client) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.m[cl.ID]; ok && e.cl == cl {
		delete(s.m, cl.ID)
	}
}

// retainedQuota counts the retained messages each owner (an identity, or
// a client id when anonymous) has set, and their payload bytes. A retained
// message belongs to whoever set it last; replacing or clearing it frees
// its owner's share.
type retainedQuota struct {
	maxCount, maxBytes int

	mu     sync.Mutex
	topics map[string]retainedEntry
	owners map[string]retainedUsage
}

type retainedEntry struct {
	owner string
	size  int
}

type retainedUsage struct{ count, bytes int }

func newRetainedQuota(maxCount, maxBytes int) *retainedQuota {
	return &retainedQuota{maxCount: maxCount, maxBytes: maxBytes, topics: map[string]retainedEntry{}, owners: map[string]retainedUsage{}}
}

// admit reports whether owner may retain size bytes on topic (0 clears
// the topic, always allowed), and records it when commit is set and it
// may.
func (q *retainedQuota) admit(owner, topic string, size int, commit bool) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	old, had := q.topics[topic]
	if size > 0 {
		u := q.owners[owner]
		if had && old.owner == owner {
			u.bytes -= old.size
		} else {
			u.count++
		}
		u.bytes += size
		if u.count > q.maxCount || u.bytes > q.maxBytes {
			return false
		}
	}
	if !commit {
		return true
	}
	if had {
		q.release(old)
		delete(q.topics, topic)
	}
	if size > 0 {
		q.topics[topic] = retainedEntry{owner: owner, size: size}
		u := q.owners[owner]
		u.count++
		u.bytes += size
		q.owners[owner] = u
	}
	return true
}

// expired forgets the retained message of topic (mochi expired it).
func (q *retainedQuota) expired(topic string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if e, ok := q.topics[topic]; ok {
		q.release(e)
		delete(q.topics, topic)
	}
}

// release takes e off its owner's usage; q.mu is held.
func (q *retainedQuota) release(e retainedEntry) {
	u := q.owners[e.owner]
	u.count--
	u.bytes -= e.size
	if u.count <= 0 {
		delete(q.owners, e.owner)
		return
	}
	q.owners[e.owner] = u
}

// retainedOwner names whom a client's retained messages count against:
// its identity, or its client id when the identity names nobody.
func retainedOwner(cl *mochi.Client, id auth.Identity) string {
	if k := id.Key(); k != "" {
		return k
	}
	return "client:" + cl.ID
}
