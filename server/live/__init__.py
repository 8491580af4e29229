"""The live room: who is in it, its ordered events (marks, guidance, captures), the bus that carries
them across nodes, and the Socket.IO handlers."""
