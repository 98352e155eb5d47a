package gateway

import (
	"hash/maphash"
	"sync"

	"github.com/subgate/subgate/southbound"
)

// liveShards spreads the live-connection index over independently locked
// plain maps: a sync.Map costs about 100 bytes per entry, a plain map
// about 40 (docs/memory.md), and sharding keeps login bursts from
// contending on one lock.
const liveShards = 64

// liveMap is device id -> the device's live connection. Safe for
// concurrent use; no I/O under its locks.
type liveMap struct {
	seed   maphash.Seed
	shards [liveShards]liveShard
}

type liveShard struct {
	mu sync.Mutex
	m  map[string]*southbound.Conn
}

func (l *liveMap) shard(id string) *liveShard {
	if l.seed == (maphash.Seed{}) {
		panic("gateway: liveMap used before init")
	}
	return &l.shards[maphash.String(l.seed, id)%liveShards]
}

func (l *liveMap) init() {
	l.seed = maphash.MakeSeed()
	for i := range l.shards {
		l.shards[i].m = make(map[string]*southbound.Conn)
	}
}

// store sets id's connection.
func (l *liveMap) store(id string, c *southbound.Conn) {
	s := l.shard(id)
	s.mu.Lock()
	s.m[id] = c
	s.mu.Unlock()
}

// load returns id's connection.
func (l *liveMap) load(id string) (*southbound.Conn, bool) {
	s := l.shard(id)
	s.mu.Lock()
	c, ok := s.m[id]
	s.mu.Unlock()
	return c, ok
}

// compareAndDelete removes id only while its connection is c.
func (l *liveMap) compareAndDelete(id string, c *southbound.Conn) bool {
	s := l.shard(id)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m[id] != c {
		return false
	}
	delete(s.m, id)
	return true
}
