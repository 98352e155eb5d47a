package gateway

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// Errors of the OTA package cache.
var (
	// errOTACacheFull means the packages pinned by unfinished jobs and the
	// downloads in progress leave no room for another package.
	errOTACacheFull = errors.New("gateway: OTA package cache full (ota.cache_max_bytes)")
	// errOTANotCached means a package is not (or no longer) in the cache.
	errOTANotCached = errors.New("gateway: OTA package not in the cache")
)

// partSuffix marks a download in progress (or interrupted, kept for an
// HTTP Range resume).
const partSuffix = ".part"

// otaCache is the content-addressed package store on disk: a complete
// package is the file <dir>/<sha256 hex>, a download in progress
// <dir>/<key>.part, where key is the expected SHA-256 or, for a _v2
// package announced without one, "u-" and a hash of its URL.
//
// Bound: complete packages plus reservations of downloads (their expected
// size) never exceed max bytes; to make room, the least recently used
// packages that no unfinished job pins are deleted. Used from the OTA
// scheduler goroutine (pin, unpin, readAt) and from the download workers
// (reserve, commit, verify); mu guards the index, never a network call.
type otaCache struct {
	dir string
	max int64
	now func() time.Time
	set func(bytes int64) // reports used+reserved

	// mu guards the following fields.
	mu       sync.Mutex
	entries  map[string]*otaPkg // by sign
	used     int64              // bytes of complete packages
	reserved map[string]int64   // key -> bytes reserved for its download
}

// otaPkg is one complete package in the cache.
type otaPkg struct {
	sign     string
	size     int64
	refs     int // unfinished jobs pinning it
	lastUse  time.Time
	verified bool     // hashed by this process
	f        *os.File // open while refs > 0
}

func isSign(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// newOTACache opens (creating) dir and indexes the complete packages in it.
// Partial downloads whose key keepPart rejects are deleted; the others stay
// for a Range resume. Files of other names are left alone.
func newOTACache(dir string, max int64, now func() time.Time, set func(int64), keepPart func(key string) bool) (*otaCache, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("gateway: OTA cache dir: %w", err)
	}
	c := &otaCache{dir: dir, max: max, now: now, set: set, entries: map[string]*otaPkg{}, reserved: map[string]int64{}}
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("gateway: OTA cache dir: %w", err)
	}
	for _, de := range des {
		if !de.Type().IsRegular() {
			continue
		}
		name := de.Name()
		info, err := de.Info()
		if err != nil {
			continue
		}
		if key, ok := strings.CutSuffix(name, partSuffix); ok {
			if keepPart(key) {
				c.reserved[key] = info.Size()
			} else {
				_ = os.Remove(filepath.Join(dir, name))
			}
			continue
		}
		if isSign(name) {
			// Not verified: the first use hashes it again (a crash may
			// have left anything behind).
			c.entries[name] = &otaPkg{sign: name, size: info.Size(), lastUse: info.ModTime()}
			c.used += info.Size()
		}
	}
	c.report()
	return c, nil
}

func (c *otaCache) path(name string) string { return filepath.Join(c.dir, name) }
func (c *otaCache) partPath(key string) string {
	return filepath.Join(c.dir, key+partSuffix)
}

func (c *otaCache) report() {
	total := c.used
	for _, n := range c.reserved {
		total += n
	}
	if c.set != nil {
		c.set(total)
	}
}

// state says whether sign is cached and, if so, whether this process has
// verified its bytes.
func (c *otaCache) state(sign string) (cached, verified bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.entries[sign]
	return ok, ok && p.verified
}

// verify hashes a cached package that was found on disk at start. A
// package whose bytes do not match its name is deleted.
func (c *otaCache) verify(sign string) error {
	f, err := os.Open(c.path(sign))
	if err != nil {
		c.drop(sign)
		return fmt.Errorf("%w: %v", errOTANotCached, err)
	}
	h := sha256.New()
	_, err = io.Copy(h, f)
	f.Close()
	if err != nil || hex.EncodeToString(h.Sum(nil)) != sign {
		c.drop(sign)
		return fmt.Errorf("%w: cached %s failed verification", errOTANotCached, sign)
	}
	c.mu.Lock()
	if p, ok := c.entries[sign]; ok {
		p.verified = true
	}
	c.mu.Unlock()
	return nil
}

// drop deletes an unpinned package (a pinned one stays: it is in use).
func (c *otaCache) drop(sign string) {
	c.mu.Lock()
	p, ok := c.entries[sign]
	if ok && p.refs == 0 {
		delete(c.entries, sign)
		c.used -= p.size
		_ = os.Remove(c.path(sign))
	}
	c.report()
	c.mu.Unlock()
}

// reserve makes room for a download of size bytes under key, evicting
// least recently used unpinned packages. Reserving a key again replaces
// its reservation.
func (c *otaCache) reserve(key string, size int64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if size > c.max {
		return fmt.Errorf("%w: the package alone (%d bytes) is larger than the cache (%d bytes)", errOTACacheFull, size, c.max)
	}
	others := c.used
	for k, n := range c.reserved {
		if k != key {
			others += n
		}
	}
	for others+size > c.max {
		var victim *otaPkg
		for _, p := range c.entries {
			if p.refs == 0 && (victim == nil || p.lastUse.Before(victim.lastUse)) {
				victim = p
			}
		}
		if victim == nil {
			return errOTACacheFull
		}
		delete(c.entries, victim.sign)
		c.used -= victim.size
		others -= victim.size
		_ = os.Remove(c.path(victim.sign))
	}
	c.reserved[key] = size
	c.report()
	return nil
}

// release ends the reservation of key; with removePart the partial file
// goes too (a failure that a resume cannot mend).
func (c *otaCache) release(key string, removePart bool) {
	c.mu.Lock()
	if removePart {
		delete(c.reserved, key)
		_ = os.Remove(c.partPath(key))
	}
	c.report()
	c.mu.Unlock()
}

// commit turns the finished partial file of key into the package sign.
func (c *otaCache) commit(key, sign string, size int64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.reserved, key)
	defer c.report()
	if p, ok := c.entries[sign]; ok {
		// The same bytes arrived under another key (a _v2 URL).
		_ = os.Remove(c.partPath(key))
		p.verified = true
		return nil
	}
	if err := os.Rename(c.partPath(key), c.path(sign)); err != nil {
		_ = os.Remove(c.partPath(key))
		return fmt.Errorf("gateway: OTA cache: %w", err)
	}
	c.entries[sign] = &otaPkg{sign: sign, size: size, lastUse: c.now(), verified: true}
	c.used += size
	return nil
}

// pin marks a verified package as used by one more job and returns its
// size; false when it is not cached and verified.
func (c *otaCache) pin(sign string) (int64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.entries[sign]
	if !ok || !p.verified {
		return 0, false
	}
	p.refs++
	p.lastUse = c.now()
	return p.size, true
}

// unpin ends one job's use of a package; the last one closes its file.
func (c *otaCache) unpin(sign string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.entries[sign]
	if !ok || p.refs == 0 {
		return
	}
	p.refs--
	p.lastUse = c.now()
	if p.refs == 0 && p.f != nil {
		_ = p.f.Close()
		p.f = nil
	}
}

// readAt fills buf from a pinned package at off.
func (c *otaCache) readAt(sign string, buf []byte, off int64) error {
	c.mu.Lock()
	p, ok := c.entries[sign]
	if !ok || p.refs == 0 {
		c.mu.Unlock()
		return errOTANotCached
	}
	if p.f == nil {
		f, err := os.Open(c.path(sign))
		if err != nil {
			c.mu.Unlock()
			return fmt.Errorf("%w: %v", errOTANotCached, err)
		}
		p.f = f
	}
	f := p.f
	c.mu.Unlock()
	if _, err := f.ReadAt(buf, off); err != nil {
		return fmt.Errorf("gateway: read OTA package %s at %d: %w", sign, off, err)
	}
	return nil
}

// close closes every open package file (the scheduler is exiting).
func (c *otaCache) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range c.entries {
		if p.f != nil {
			_ = p.f.Close()
			p.f = nil
		}
		p.refs = 0
	}
}
