// Package metadb is the metadata service's store: meta.db, one bbolt file
// owned by this process alone, holding every namespaced record — namespaces,
// images, leases, and the namespace's view of content — and the garbage
// collection that removes what no root reaches.
//
// The layout of meta.db:
//
//	v1                                  schema version 1
//	├── version : uint64                 bumped only by migrations
//	└── <namespace>                      one bucket per namespace
//	    ├── labels
//	    │   └── <key> : <value>
//	    ├── images
//	    │   └── <name>
//	    │       ├── createdat : time      time.MarshalBinary
//	    │       ├── updatedat : time
//	    │       ├── target
//	    │       │   ├── digest : string
//	    │       │   ├── mediatype : string
//	    │       │   ├── size : varint
//	    │       │   └── annotations/<key> : <value>
//	    │       └── labels/<key> : <value>
//	    ├── content
//	    │   ├── blob
//	    │   │   └── <digest>               present: the namespace may see the blob
//	    │   │       ├── createdat, updatedat : time
//	    │   │       ├── size : varint
//	    │   │       └── labels/<key> : <value>
//	    │   └── ingests
//	    │       └── <ref>                  an open ingest of this namespace
//	    │           ├── ref : string        the content service's ref for it
//	    │           ├── lease : string      the lease it was opened in, if any
//	    │           └── expireat : time     unleased ingests: collectable after
//	    ├── snapshots
//	    │   └── <snapshotter>
//	    │       └── <key>
//	    │           ├── name : string      the snapshotter's key for it
//	    │           ├── parent : string    the parent's key in this namespace
//	    │           ├── kind : byte        active, view or committed
//	    │           ├── createdat, updatedat : time
//	    │           ├── labels/<key> : <value>
//	    │           └── children/<key> : ""
//	    ├── containers
//	    │   └── <id>
//	    │       ├── record : proto     the containerd API message
//	    │       ├── snapshotter, snapshotkey : string   what GC follows
//	    │       └── labels/<key> : <value>
//	    ├── sandboxes                      containerd's Sandbox Store
//	    │   └── <id>
//	    │       ├── record : proto     the containerd API message (types.Sandbox)
//	    │       └── labels/<key> : <value>   gc.ref.* here are roots
//	    └── leases
//	        └── <id>
//	            ├── createdat : time
//	            ├── labels/<key> : <value>
//	            ├── content/<digest> : ""
//	            ├── ingests/<ref> : ""
//	            └── snapshots/<snapshotter>/<key> : ""
//
// Snapshots live in the snapshotter processes, each unnamespaced: a
// snapshot there is kept while a record here names it, and the collector
// removes the others, children first.
//
// The bytes of content live in the content service, unnamespaced: a blob
// there is kept while at least one namespace holds a record of it, and the
// garbage collector removes it from there once none does.
package metadb

// SchemaVersion is the version written to v1/version.
const SchemaVersion = 1

var (
	bucketV1         = []byte("v1")
	keyVersion       = []byte("version")
	bucketLabels     = []byte("labels")
	bucketImages     = []byte("images")
	bucketContent    = []byte("content")
	bucketBlob       = []byte("blob")
	bucketIngests    = []byte("ingests")
	bucketLeases     = []byte("leases")
	bucketTarget     = []byte("target")
	bucketAnnots     = []byte("annotations")
	bucketSnaps      = []byte("snapshots")
	bucketContainers = []byte("containers")
	keyCreatedAt     = []byte("createdat")
	keyUpdatedAt     = []byte("updatedat")
	keyDigest        = []byte("digest")
	keyMediaType     = []byte("mediatype")
	keySize          = []byte("size")
	keyRef           = []byte("ref")
	keyExpireAt      = []byte("expireat")
	keyLease         = []byte("lease")
	keyKind          = []byte("kind")
	keyParent        = []byte("parent")
	keyName          = []byte("name")
	bucketChildren   = []byte("children")
	keyRecord        = []byte("record")
	keySnapshotter   = []byte("snapshotter")
	keySnapshotKey   = []byte("snapshotkey")
	bucketSandboxes  = []byte("sandboxes")
)
