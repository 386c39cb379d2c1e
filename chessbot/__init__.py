"""chessbot: the training payload. A small convolutional policy network that predicts the move
a strong engine plays, trained from JSONL positions ({"fen", "move"}) on a GPU pod."""
